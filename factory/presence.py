"""Which workers are alive and what they serve: the shape of a worker's presence record.

Each worker keeps its :class:`WorkerPresence` fresh under ``keys.worker_key(name)`` (field
``presence``, a TTL of a few heartbeats) and scores its name in ``keys.workers_key()`` by when the
record lapses (``worker.presence`` writes them); a worker that dies simply lapses. Gateways read
the live ones to refuse a call no worker serves (``NO_WORKER``), and for ``GET /stats``, the
console and ``/metrics``.

The record is also the worker's readiness and liveness, for any process that can reach Redis: it
is first written once the worker has connected, deployed its prefab folders and loaded its
queues, and it lapses a few heartbeats after the worker stops beating (:func:`live_workers`;
``factory workers`` lists them, ``factory_cli.processes.worker_listed`` waits for one).
"""

import time

import orjson
import redis
from pydantic import BaseModel, Field, ValidationError

from factory.isolation import Isolation
from factory.store import keys


class WorkerPresence(BaseModel):
    """What a worker says about itself."""

    name: str
    host: str
    pid: int
    started_ms: int
    beat_ms: int
    serves_all: bool = Field(default=True, description="serves every prefab deployed, now and later")
    queues: list[str]
    prefabs: list[str] = Field(description="the prefabs it serves now")
    versions: list[str] = Field(default_factory=list, description="``prefab@version`` of each version it can run")
    secrets: list[str] = Field(description="names of the declared secrets it can supply (never their values)")
    cpu_s: float
    rss_bytes: int
    isolation: Isolation | None = Field(default=None, description="how its prefab runners are confined")

    def serves(self, prefab_id: str) -> bool:
        return self.serves_all or prefab_id in self.prefabs


def parse_presence(raw: bytes | str | None) -> WorkerPresence | None:
    """A presence record (``HGET <worker key> presence``); None when missing or unreadable."""
    if not raw:
        return None
    try:
        return WorkerPresence.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError):
        return None


def live_workers(client: redis.Redis) -> list[WorkerPresence]:
    """The workers whose presence record has not lapsed, read in one round trip after the index."""
    names: list[bytes] = client.zrangebyscore(keys.workers_key(), int(time.time() * 1000), "+inf")  # type: ignore[assignment]
    if not names:
        return []
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(keys.worker_key(name.decode()), "presence")
        raw: list[bytes | None] = pipe.execute()
    return [worker for worker in map(parse_presence, raw) if worker is not None]
