"""The log lines of a job's run in a work horse: ``started``, then ``ended`` (outcome, duration) or ``retried``.

Every line emitted while the job runs carries its ``job_id``, prefab, version, function and worker,
the prefab's own ``logging`` and its ``print`` output included (captured as log lines of the
``prefab.<id>`` logger). The end is what callers see: the status this run's own terminal event
gave the job when it closed it (``duration_s`` is then the run's, as the horse measured it), else
what the job's record in Redis says, whoever ended the job (a cancel, a limit).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from factory.jobs import InvocationRequest, JobRecord, JobStatus
from factory.logs import job_context
from factory.store import keys

logger = logging.getLogger(__name__)


@dataclass
class LoggedRun:
    """What the block logs of its run, set by the caller inside it: did it end with a retry (another
    attempt follows), or with the terminal event it wrote itself (no read back at the end).

    :meth:`log_started` writes the ``started`` line; the caller calls it once the prefab's runner
    has its order, so the line's cost is not on the way to the job's first event (the block's end
    writes it first, if the run never got that far).
    """

    retrying: bool = False
    closed_as: JobStatus | None = None  # the status the run's own terminal event gave the job
    error_code: str | None = None  # that event's code, when it was an error
    started_logged: bool = False

    def log_started(self) -> None:
        if not self.started_logged:
            self.started_logged = True
            logger.info("job started", extra={"event": "started"})


def _ended(client: redis.Redis, job_id: str) -> JobRecord | None:
    try:
        fields = client.hgetall(keys.job_key(job_id))
    except (redis.RedisError, OSError):
        return None
    return JobRecord.from_hash(fields) if fields else None  # type: ignore[arg-type]


@contextmanager
def logged_run(client: redis.Redis, request: InvocationRequest, attempt: int, worker: str) -> Iterator[LoggedRun]:
    """Tag the block's log lines with the job, capture print output, log its start and its end."""
    fields = {
        "prefab_id": request.prefab_id,
        "version": request.version or None,
        "function": request.function_name,
        "worker": worker,
        "attempt": attempt,
    }
    run = LoggedRun()
    with job_context(request.job_id, **fields):
        began = time.monotonic()
        try:
            yield run
        finally:
            run.log_started()
            _log_end(client, request.job_id, run, time.monotonic() - began)


def _log_end(client: redis.Redis, job_id: str, run: LoggedRun, ran_s: float) -> None:
    if run.retrying:
        logger.info("job retried", extra={"event": "retried"})
        return
    if run.closed_as is not None:  # no read back: this run wrote the end itself
        _log_ended(run.closed_as, run.error_code, round(ran_s, 3))
        return
    record = _ended(client, job_id)
    if record is None or not record.status.is_final:
        logger.warning("job run ended with the job still open", extra={"event": "open"})
    else:
        began = record.started_ms or record.created_ms
        duration_s = round(((record.ended_ms or began) - began) / 1000, 3)
        _log_ended(record.status, record.error.code if record.error else None, duration_s)


def _log_ended(status: JobStatus, error_code: str | None, duration_s: float) -> None:
    extra = {"event": "ended", "outcome": status.value, "error_code": error_code, "duration_s": duration_s}
    logger.info("job ended: %s in %.3f s", status.value, duration_s, extra=extra)
