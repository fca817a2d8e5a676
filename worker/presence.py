"""A worker's presence record: who it is, what it serves and its process figures, kept fresh in Redis.

A daemon thread writes ``keys.worker_key(name)`` every heartbeat with a TTL of three heartbeats and
scores the name in ``keys.workers_key()`` by when the record lapses, so any gateway can list the
workers alive (and export their figures as metrics) without reaching the workers: a worker killed
outright simply drops out once its record lapses. A clean stop deletes both at once. The same beat
keeps the worker's record in RQ's view (``factory.store.rqview``), so ``rq info`` lists it too.

The thread has its own Redis connection and touches nothing of the engine's; it is started before
the first work horse is forked (a fork copies no thread), and a Redis outage only skips beats.
"""

import logging
import os
import resource
import socket
import threading
from pathlib import Path

import redis

from factory.isolation import probe
from factory.jobs import now_ms
from factory.presence import WorkerPresence
from factory.settings import Settings
from factory.store import keys, rqview
from worker.queues import ServedQueues

logger = logging.getLogger(__name__)

LAPSE_BEATS = 3


def _rss_bytes() -> int:
    """Resident memory of this process now (from /proc), else its peak (getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_s() -> float:
    """CPU time of this process and its finished children (the work horses it reaped)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Presence:
    """Keeps one worker's presence record fresh until :meth:`stop`."""

    def __init__(self, settings: Settings, name: str, served: ServedQueues, secrets: set[str]) -> None:
        self.settings = settings
        self.name = name
        self.served = served  # the engine's: it follows the catalog, this thread reads it
        self.secrets = secrets  # every name the worker could hand a prefab; only declared ones are told
        self.started_ms = now_ms()
        self.isolation = probe(settings)
        self.interval_s = max(0.5, settings.worker_heartbeat_s)
        self.client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=5, socket_connect_timeout=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)

    def start(self) -> "Presence":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and remove the record."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
        try:
            with self.client.pipeline() as pipe:
                pipe.delete(keys.worker_key(self.name))
                pipe.zrem(keys.workers_key(), self.name)
                rqview.worker_gone_on(pipe, self.name, self.served.names())
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not remove the presence record of %s: %s", self.name, exc)
        self.client.close()

    def beat(self) -> None:
        """Write the record once."""
        now = now_ms()
        served = self.served
        record = WorkerPresence(
            name=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_ms=self.started_ms,
            beat_ms=now,
            serves_all=not served.only,
            queues=served.names(),
            prefabs=list(served.prefab_ids),
            versions=list(served.versions),
            secrets=sorted(self.secrets & served.secret_names),
            cpu_s=_cpu_s(),
            rss_bytes=_rss_bytes(),
            isolation=self.isolation,
        )
        lapse_s = self.interval_s * LAPSE_BEATS
        with self.client.pipeline() as pipe:
            pipe.hset(keys.worker_key(self.name), "presence", record.model_dump_json())
            pipe.expire(keys.worker_key(self.name), max(1, round(lapse_s)))
            pipe.zadd(keys.workers_key(), {self.name: now + lapse_s * 1000})
            pipe.zremrangebyscore(keys.workers_key(), "-inf", now)  # workers that lapsed
            pipe.expire(keys.workers_key(), max(1, round(lapse_s)))
            rqview.worker_beat_on(
                pipe,
                self.name,
                record.queues,
                pid=record.pid,
                hostname=record.host,
                birth_ms=self.started_ms,
                ttl_s=max(1, round(lapse_s)),
            )
            pipe.execute()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except (redis.RedisError, OSError) as exc:
                logger.debug("presence beat skipped: %s", exc)
            self._stop.wait(self.interval_s)
