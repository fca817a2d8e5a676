"""The log lines of a job's run in a work horse: ``started``, then ``ended`` (outcome, duration) or ``retried``.

Every line emitted while the job runs carries its ``job_id``, prefab, version, function and worker,
the prefab's own ``logging`` and its ``print`` output included (captured as log lines of the
``prefab.<id>`` logger). The end is read back from the job's record in Redis, which the append
script wrote with the terminal event, so the line says what callers see, whoever ended the job.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from factory.jobs import InvocationRequest, JobRecord
from factory.logs import job_context
from factory.store import keys

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """Set by the caller inside the block: did the run end with a retry (another attempt follows)."""

    retrying: bool = False


def _ended(client: redis.Redis, job_id: str) -> JobRecord | None:
    try:
        fields = client.hgetall(keys.job_key(job_id))
    except (redis.RedisError, OSError):
        return None
    return JobRecord.from_hash(fields) if fields else None  # type: ignore[arg-type]


@contextmanager
def logged_run(client: redis.Redis, request: InvocationRequest, attempt: int, worker: str) -> Iterator[RunOutcome]:
    """Tag the block's log lines with the job, capture print output, log its start and its end."""
    fields = {
        "prefab_id": request.prefab_id,
        "version": request.version or None,
        "function": request.function_name,
        "worker": worker,
        "attempt": attempt,
    }
    outcome = RunOutcome()
    with job_context(request.job_id, **fields):
        logger.info("job started", extra={"event": "started"})
        try:
            yield outcome
        finally:
            _log_end(client, request.job_id, outcome)


def _log_end(client: redis.Redis, job_id: str, outcome: RunOutcome) -> None:
    record = _ended(client, job_id)
    if outcome.retrying:
        logger.info("job retried", extra={"event": "retried"})
    elif record is None or not record.status.is_final:
        logger.warning("job run ended with the job still open", extra={"event": "open"})
    else:
        began = record.started_ms or record.created_ms
        duration_s = round(((record.ended_ms or began) - began) / 1000, 3)
        extra = {
            "event": "ended",
            "outcome": record.status.value,
            "error_code": record.error.code if record.error else None,
            "duration_s": duration_s,
        }
        logger.info("job ended: %s in %.3f s", record.status.value, duration_s, extra=extra)
