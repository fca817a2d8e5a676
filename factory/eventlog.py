"""The atomic steps on a job's log and record, each one Lua script.

APPEND gives a batch of events their ``seq``, appends them to the job's log and publishes
them on its channel. Atomicity is what makes replay-then-live exact: a reader that subscribes
and then reads the log sees every event either in the log or on the channel, and drops the
overlap by ``seq``. The script also enforces the terminal rule for every writer (worker,
gateway cancel, lost-job reaper): once a terminal event is in the log nothing more is
appended, so a stream has exactly one. A batch id makes a retried append idempotent (a reply
lost to a dropped connection). The event limit is exact: a batch that crosses it appends the
events up to the limit and answers ``LIMIT_REACHED``, so the writer's ``EVENT_LIMIT_EXCEEDED``
is event *limit + 1* however the events were batched.

Executions and fencing: each run of a job (an *attempt*) gets a random execution token when a
worker claims it (CLAIM, which also registers its heartbeat in ``keys.running_jobs_key()`` and
marks the job started).
The work horse passes the token with each append, and an append whose token is no longer the
job's (the attempt was declared lost and retried, or ended by someone else) is refused with
``SUPERSEDED``, so a zombie attempt can never write into its successor's stream. A batch in
*retry* mode is the last of an attempt that will run again: it appends the ``retry`` event,
puts the record back to ``queued`` with the next attempt number and marks the execution
``retry:<token>``, without closing the log.

Sync (worker) and async (gateway) clients both register :data:`APPEND_LUA`; only the
arguments are built here.
"""

from dataclasses import dataclass
from enum import IntEnum, StrEnum

import orjson

from factory import keys
from factory.events import CANCELED, ErrorInfo, error_event
from factory.jobs import JobStatus, now_ms, terminal_fields
from factory.jobstats import STATS_FUNCTIONS

APPEND_LUA = (
    STATS_FUNCTIONS
    + """
local job, log, channel, files = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats_outcomes, stats_durations, stats_first = KEYS[5], KEYS[6], KEYS[7]
local batch_id, max_events, retention_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mode, token, n_fields = ARGV[4], ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', job) == 0 then return {-3, 0} end
if redis.call('HEXISTS', job, 'terminal') == 1 then return {-1, redis.call('LLEN', log)} end
local seen = redis.call('HGET', job, 'batch')
if batch_id ~= '' and seen == batch_id then return {0, redis.call('LLEN', log)} end
if batch_id ~= '' and seen == batch_id .. ':limit' then return {-2, redis.call('LLEN', log)} end
if token ~= '' and redis.call('HGET', job, 'execution') ~= token then return {-4, redis.call('LLEN', log)} end
local first_event = 7 + n_fields
local n = #ARGV - first_event + 1
local length = redis.call('LLEN', log)
-- The limit counts the job's own events; a terminal or retry event closing the batch is past it.
local own = n
if mode ~= 'event' then own = n - 1 end
if max_events > 0 and length + own > max_events then
  -- Keep the events that fit, exactly up to the limit; the caller then ends the job.
  local fit = max_events - length
  if fit > 0 then
    local kept = {}
    for i = first_event, first_event + fit - 1 do kept[#kept + 1] = ARGV[i] end
    local last = redis.call('RPUSH', log, unpack(kept))
    redis.call('PUBLISH', channel, (last - fit + 1) .. '\\n' .. table.concat(kept, '\\n'))
    length = last
  end
  if batch_id ~= '' then redis.call('HSET', job, 'batch', batch_id .. ':limit') end
  return {-2, length}
end
local events = {}
for i = first_event, #ARGV do events[#events + 1] = ARGV[i] end
local last = redis.call('RPUSH', log, unpack(events))
if batch_id ~= '' then redis.call('HSET', job, 'batch', batch_id) end
for i = 7, 6 + n_fields, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
local labels = stats_outcomes and job_labels(job)
local created = ms_field(job, 'created_ms')
if stats_first and length == 0 and created then observe(stats_first, labels, (now_ms() - created) / 1000) end
if mode == 'terminal' then
  redis.call('HSET', job, 'terminal', '1')
  redis.call('EXPIRE', job, retention_s)
  redis.call('EXPIRE', log, retention_s)
  if redis.call('EXISTS', files) == 1 then redis.call('EXPIRE', files, retention_s) end
  if stats_outcomes then
    local status = cjson.decode(redis.call('HGET', job, 'status') or '"failed"')
    count_outcome(stats_outcomes, job, labels, status)
    local began, ended = ms_field(job, 'started_ms') or created, ms_field(job, 'ended_ms')
    if began and ended then observe(stats_durations, labels .. '\\t' .. status, (ended - began) / 1000) end
  end
elseif mode == 'retry' and stats_outcomes then
  count_outcome(stats_outcomes, job, labels, 'retried')
end
redis.call('PUBLISH', channel, (last - n + 1) .. '\\n' .. table.concat(events, '\\n'))
return {1, last}
"""
)

# The claim as a Lua function, shared with the worker's take script (``worker.rqjobs``): a new
# execution token, the attempt number, the heartbeat in the running set, and ``fields`` (a flat
# field/value list) written with it. Returns the attempt number, or an Outcome below 0.
CLAIM_FUNCTION = """
local function claim(job, running, token, member, deadline, fields)
  if redis.call('EXISTS', job) == 0 then return -3 end
  if redis.call('HEXISTS', job, 'terminal') == 1 then return -1 end
  local attempt = tonumber(redis.call('HGET', job, 'attempt')) or 0
  if attempt < 1 then
    attempt = 1
    redis.call('HSET', job, 'attempt', '1')
  end
  redis.call('HSET', job, 'execution', token)
  for i = 1, #fields, 2 do redis.call('HSET', job, fields[i], fields[i + 1]) end
  redis.call('ZADD', running, deadline, member)
  return attempt
end
"""

# KEYS: job, running set. ARGV: token, running member, its deadline (ms), then record field/value pairs.
CLAIM_LUA = (
    CLAIM_FUNCTION
    + """
return claim(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], {unpack(ARGV, 4)})
"""
)

RETRY_PREFIX = "retry:"


class Outcome(IntEnum):
    APPENDED = 1
    DUPLICATE = 0
    ALREADY_ENDED = -1
    LIMIT_REACHED = -2
    UNKNOWN_JOB = -3
    SUPERSEDED = -4


class Mode(StrEnum):
    """What a batch does to the job besides appending its events."""

    EVENT = "event"
    TERMINAL = "terminal"
    RETRY = "retry"


@dataclass(frozen=True)
class AppendResult:
    outcome: Outcome
    last_seq: int


def append_keys(job_id: str, *, stats: bool = True) -> list[str]:
    """The keys of :data:`APPEND_LUA`: the job's own, then (unless ``stats`` is off) the job statistics'."""
    own = [keys.job_key(job_id), keys.events_key(job_id), keys.events_channel(job_id), keys.files_key(job_id)]
    if not stats:
        return own
    return [*own, keys.stats_outcomes_key(), keys.stats_durations_key(), keys.stats_first_event_key()]


def append_args(
    events: list[bytes],
    *,
    batch_id: str = "",
    max_events: int = 0,
    retention_s: int,
    terminal_fields: dict[str, bytes] | None = None,
    mode: Mode | None = None,
    token: str = "",
) -> list[bytes | str | int]:
    """Arguments of :data:`APPEND_LUA`.

    ``terminal_fields`` are the record fields written with the batch; given alone they mark it
    as ending the job (``mode`` TERMINAL). ``token`` fences the append to one execution.
    """
    if mode is None:
        mode = Mode.TERMINAL if terminal_fields else Mode.EVENT
    fields: list[bytes | str | int] = []
    for name, value in (terminal_fields or {}).items():
        fields.extend((name, value))
    head: list[bytes | str | int] = [batch_id, max_events, retention_s, mode.value, token, len(fields)]
    return [*head, *fields, *events]


def parse_append(reply: list[int]) -> AppendResult:
    return AppendResult(Outcome(int(reply[0])), int(reply[1]))


def terminal_error_args(code: str, message: str, *, retention_s: int, token: str = "") -> list[bytes | str | int]:
    """Arguments appending a factory-made terminal ``error`` (cancel, lost worker, shutdown)."""
    status = JobStatus.CANCELED if code == CANCELED else JobStatus.FAILED
    fields = terminal_fields(status, now_ms(), None, ErrorInfo(code=code, message=message))
    return append_args([error_event(code, message)], retention_s=retention_s, terminal_fields=fields, token=token)


def retry_event(attempt: int, max_attempts: int, code: str, message: str) -> bytes:
    """The ``retry`` event: the attempt that starts next, and why the previous one did not finish."""
    data = {"attempt": attempt, "max_attempts": max_attempts, "error_code": code, "reason": message}
    return orjson.dumps({"type": "retry", "data": data})


def started_fields(worker: str) -> dict[str, bytes]:
    """Record fields of a job that a worker starts running."""
    return {
        "status": orjson.dumps(JobStatus.STARTED.value),
        "started_ms": orjson.dumps(now_ms()),
        "worker": orjson.dumps(worker),
    }


def retry_fields(token: str, attempt: int) -> dict[str, bytes]:
    """Record fields of a job going back to the queue for its next attempt."""
    return {
        "status": orjson.dumps(JobStatus.QUEUED.value),
        "attempt": orjson.dumps(attempt),
        "execution": (RETRY_PREFIX + token).encode(),
    }


def retry_args(
    token: str, attempt: int, max_attempts: int, code: str, message: str, *, retention_s: int
) -> list[bytes | str | int]:
    """Arguments ending execution ``token`` with a ``retry`` event, so ``attempt`` runs next."""
    return append_args(
        [retry_event(attempt, max_attempts, code, message)],
        retention_s=retention_s,
        terminal_fields=retry_fields(token, attempt),
        mode=Mode.RETRY,
        token=token,
    )
