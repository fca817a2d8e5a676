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

The scripts themselves are in ``factory.store.scripts`` (APPEND, CLAIM); sync (worker) and async
(gateway) clients both register them, and only their arguments are built here.
"""

from dataclasses import dataclass
from enum import IntEnum, StrEnum

import orjson

from factory.events import CANCELED, ErrorInfo, error_event
from factory.jobs import JobStatus, now_ms, terminal_fields
from factory.store import fields, keys

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
    """The keys of APPEND: the job's own, then (unless ``stats`` is off) the job statistics'."""
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
    """Arguments of APPEND (``factory.store.scripts``).

    ``terminal_fields`` are the record fields written with the batch; given alone they mark it
    as ending the job (``mode`` TERMINAL). ``token`` fences the append to one execution.
    """
    if mode is None:
        mode = Mode.TERMINAL if terminal_fields else Mode.EVENT
    items: list[bytes | str | int] = []
    for name, value in (terminal_fields or {}).items():
        items.extend((name, value))
    head: list[bytes | str | int] = [batch_id, max_events, retention_s, mode.value, token, len(items)]
    return [*head, *items, *events]


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
    """Record fields of a job that a worker starts running, but the time: the take stamps
    ``started_ms`` with Redis' clock when it runs (``TAKE_LUA``)."""
    return {
        fields.STATUS: orjson.dumps(JobStatus.STARTED.value),
        fields.WORKER: orjson.dumps(worker),
    }


def retry_fields(token: str, attempt: int) -> dict[str, bytes]:
    """Record fields of a job going back to the queue for its next attempt."""
    return {
        fields.STATUS: orjson.dumps(JobStatus.QUEUED.value),
        fields.ATTEMPT: orjson.dumps(attempt),
        fields.EXECUTION: (RETRY_PREFIX + token).encode(),
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
