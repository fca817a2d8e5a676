"""Reaping: settling the executions whose worker vanished without a word.

Every worker runs :func:`reap_once` about every heartbeat; one process per interval (a lock)
looks for executions in ``keys.running_jobs_key()`` whose heartbeat lapsed and settles each one
(``factory.store.executions.settle``): retried when it has attempts left, else ended with
``WORKER_LOST``. An execution leaves the running set only once it is settled, so a pass cut short
is finished by the next one.

Heartbeats are compared with each process's clock; a Redis that restarted less than
``worker_lost_after_s`` ago reaps nothing, since nobody could send heartbeats while it was down.
"""

import logging

import redis

from factory.connections import RETRYABLE
from factory.events import WORKER_LOST
from factory.jobs import now_ms
from factory.settings import Settings
from factory.store import executions, keys

logger = logging.getLogger(__name__)

REAP_BATCH = 100


def reap_once(client: redis.Redis, settings: Settings, owner: str) -> int:
    """Settle the executions whose heartbeat lapsed (at most one process per interval does it)."""
    interval_ms = max(100, int(settings.worker_heartbeat_s * 1000))
    if not client.set(keys.reaper_lock_key(), owner, nx=True, px=interval_ms):
        return 0
    lapsed: list[bytes] = client.zrangebyscore(  # type: ignore[assignment]
        keys.running_jobs_key(), "-inf", now_ms(), start=0, num=REAP_BATCH
    )
    if not lapsed:
        return 0
    uptime_s = int(client.info("server").get("uptime_in_seconds", 0))
    if uptime_s < settings.worker_lost_after_s:
        logger.info("Redis restarted %d s ago; giving %d lapsed heartbeats time to resume", uptime_s, len(lapsed))
        return 0
    reaped = 0
    message = f"the worker running this job stopped sending heartbeats for {settings.worker_lost_after_s:g} s"
    for raw in lapsed:
        member = raw.decode()
        job_id, _, token = member.partition(":")
        try:
            outcome = executions.settle(client, settings, job_id, token, WORKER_LOST, message)
        except RETRYABLE:
            raise
        except Exception:  # one job's broken state must not keep the others lost; the next pass tries again
            logger.exception("settling lost execution %s failed", token, extra={"job_id": job_id})
            continue
        client.zrem(keys.running_jobs_key(), member)
        logger.warning("lost execution %s: %s", token, outcome.value, extra={"job_id": job_id})
        reaped += 1
    return reaped
