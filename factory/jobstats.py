"""Job statistics kept in Redis: outcomes, durations and time to first event, by prefab, function and version.

They are counted inside the atomic append script (``factory.store.eventlog``), in the very step that
writes a job's first event or its terminal one, so each job is counted once, whichever process
ended it (worker, gateway cancel, lost-job reaper), and the counts survive every process restart:
any gateway serves the same figures. Histograms are kept as one counter per bucket (not
cumulative) plus a sum; :func:`histograms` turns them into Prometheus' cumulative form.

The keys are long-lived by nature; each write pushes their TTL to :data:`STATS_TTL_S` ahead, so a
factory unused that long starts its counters again from zero (which Prometheus' ``rate`` handles).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

# Upper bounds (seconds) of the histogram buckets; a last bucket takes everything above.
BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
STATS_TTL_S = 30 * 24 * 3600

# Lua, run inside the append script: ``observe`` adds one value to a histogram hash, ``job_labels``
# joins a job's label fields (their JSON text as the record stores them, decoded on reading; the
# append reads them with the rest of what it needs of the record), ``now_ms`` is Redis' clock.
STATS_FUNCTIONS = (
    "local BUCKETS = {" + ", ".join(repr(b) for b in BUCKETS_S) + "}\n"
    f"local STATS_TTL_S = {STATS_TTL_S}\n"
    """
local function job_labels(prefab_id, function_name, version)
  return (prefab_id or 'null') .. '\\t' .. (function_name or 'null') .. '\\t' .. (version or 'null')
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function observe(key, labels, value)
  local bucket = #BUCKETS + 1
  for i, bound in ipairs(BUCKETS) do
    if value <= bound then bucket = i; break end
  end
  redis.call('HINCRBY', key, labels .. '\\t' .. bucket, 1)
  redis.call('HINCRBYFLOAT', key, labels .. '\\tsum', value)
  redis.call('EXPIRE', key, STATS_TTL_S)
end
local function count_outcome(key, job, labels, outcome)
  local code = ''
  local raw = redis.call('HGET', job, 'error')
  if raw and raw ~= 'null' then
    local ok, err = pcall(cjson.decode, raw)
    if ok and type(err) == 'table' and type(err.code) == 'string' then code = err.code end
  end
  redis.call('HINCRBY', key, labels .. '\\t' .. outcome .. '\\t' .. code, 1)
  redis.call('EXPIRE', key, STATS_TTL_S)
end
local function ms_field(job, name)
  local raw = redis.call('HGET', job, name)
  return raw and tonumber(raw) or nil
end
"""
)


@dataclass(frozen=True, order=True)
class JobLabels:
    """Which function of which prefab version; ``version`` is empty when the record has none."""

    prefab_id: str
    function: str
    version: str


@dataclass(frozen=True)
class OutcomeCount:
    labels: JobLabels
    outcome: str  # finished | failed | canceled | retried
    error_code: str  # empty when finished
    count: int


@dataclass
class Histogram:
    """One label set's histogram: per-bucket counts (last one is +Inf) and the sum of values."""

    labels: JobLabels
    outcome: str = ""  # durations only: finished | failed | canceled
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    sum_s: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(``le`` bound, cumulative count) pairs, ending with ``+Inf``, as Prometheus wants them."""
        running, pairs = 0, []
        for bound, count in zip((*(repr(b) for b in BUCKETS_S), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


def _text(raw: str) -> str:
    """A label value stored as its JSON text: the string, or empty for null/missing."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    return "" if value is None else str(value)


def _labels(parts: list[str]) -> JobLabels:
    return JobLabels(_text(parts[0]), _text(parts[1]), _text(parts[2]))


def _decoded(raw: Mapping[bytes, bytes]) -> list[tuple[list[str], bytes]]:
    return [(name.decode().split("\t"), value) for name, value in raw.items()]


def outcomes(raw: Mapping[bytes, bytes]) -> list[OutcomeCount]:
    """The outcome counters of :func:`factory.store.keys.stats_outcomes_key`'s hash, sorted."""
    found = [
        OutcomeCount(_labels(parts), parts[3], parts[4], int(value))
        for parts, value in _decoded(raw)
        if len(parts) == 5
    ]
    return sorted(found, key=lambda c: (c.labels, c.outcome, c.error_code))


def histograms(raw: Mapping[bytes, bytes]) -> list[Histogram]:
    """The histograms of a durations hash (labels and outcome) or a first-event hash (labels), sorted."""
    found: dict[tuple[JobLabels, str], Histogram] = {}
    for parts, value in _decoded(raw):
        if len(parts) not in (4, 5):
            continue
        outcome, bucket = (parts[3] if len(parts) == 5 else ""), parts[-1]
        histogram = found.setdefault((_labels(parts), outcome), Histogram(_labels(parts), outcome))
        if bucket == "sum":
            histogram.sum_s = float(value)
        elif bucket.isdigit() and 1 <= int(bucket) <= len(histogram.counts):
            histogram.counts[int(bucket) - 1] += int(value)
    return [found[key] for key in sorted(found)]
