"""The atomic append: one Lua step gives a batch of events their ``seq``, appends them to the
job's log and publishes them on its channel.

Atomicity is what makes replay-then-live exact: a reader that subscribes and then reads the
log sees every event either in the log or on the channel, and drops the overlap by ``seq``.
The script also enforces the terminal rule for every writer (worker, gateway cancel, lost-job
reaper): once a terminal event is in the log nothing more is appended, so a stream has exactly
one. A batch id makes a retried append idempotent (a reply lost to a dropped connection).

Sync (worker) and async (gateway) clients both register :data:`APPEND_LUA`; only the
arguments are built here.
"""

from dataclasses import dataclass
from enum import IntEnum

from factory import keys
from factory.events import CANCELED, ErrorInfo, error_event
from factory.jobs import JobStatus, now_ms, terminal_fields

APPEND_LUA = """
local job, log, channel, files = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batch_id, max_events, retention_s = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local terminal, n_fields = ARGV[4] == '1', tonumber(ARGV[5])
if redis.call('EXISTS', job) == 0 then return {-3, 0} end
if redis.call('HEXISTS', job, 'terminal') == 1 then return {-1, redis.call('LLEN', log)} end
if batch_id ~= '' and redis.call('HGET', job, 'batch') == batch_id then
  return {0, redis.call('LLEN', log)}
end
local first_event = 6 + n_fields
local n = #ARGV - first_event + 1
local length = redis.call('LLEN', log)
if max_events > 0 and not terminal and length + n > max_events then return {-2, length} end
local events = {}
for i = first_event, #ARGV do events[#events + 1] = ARGV[i] end
local last = redis.call('RPUSH', log, unpack(events))
if batch_id ~= '' then redis.call('HSET', job, 'batch', batch_id) end
if terminal then
  redis.call('HSET', job, 'terminal', '1')
  for i = 6, 5 + n_fields, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', job, retention_s)
  redis.call('EXPIRE', log, retention_s)
  if redis.call('EXISTS', files) == 1 then redis.call('EXPIRE', files, retention_s) end
end
redis.call('PUBLISH', channel, (last - n + 1) .. '\\n' .. table.concat(events, '\\n'))
return {1, last}
"""

START_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -3 end
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return -1 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class Outcome(IntEnum):
    APPENDED = 1
    DUPLICATE = 0
    ALREADY_ENDED = -1
    LIMIT_REACHED = -2
    UNKNOWN_JOB = -3


@dataclass(frozen=True)
class AppendResult:
    outcome: Outcome
    last_seq: int


def append_keys(job_id: str) -> list[str]:
    return [keys.job_key(job_id), keys.events_key(job_id), keys.events_channel(job_id), keys.files_key(job_id)]


def append_args(
    events: list[bytes],
    *,
    batch_id: str = "",
    max_events: int = 0,
    retention_s: int,
    terminal_fields: dict[str, bytes] | None = None,
) -> list[bytes | str | int]:
    """Arguments of :data:`APPEND_LUA`; ``terminal_fields`` marks the batch as ending the job."""
    fields: list[bytes | str | int] = []
    for name, value in (terminal_fields or {}).items():
        fields.extend((name, value))
    head: list[bytes | str | int] = [batch_id, max_events, retention_s, "1" if terminal_fields else "0", len(fields)]
    return [*head, *fields, *events]


def parse_append(reply: list[int]) -> AppendResult:
    return AppendResult(Outcome(int(reply[0])), int(reply[1]))


def terminal_error_args(code: str, message: str, *, retention_s: int) -> list[bytes | str | int]:
    """Arguments appending a factory-made terminal ``error`` (cancel, lost worker, shutdown)."""
    status = JobStatus.CANCELED if code == CANCELED else JobStatus.FAILED
    fields = terminal_fields(status, now_ms(), None, ErrorInfo(code=code, message=message))
    return append_args([error_event(code, message)], retention_s=retention_s, terminal_fields=fields)
