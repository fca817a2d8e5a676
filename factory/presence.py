"""Which workers are alive and what they serve, announced with a heartbeat.

Each worker writes its :class:`WorkerAnnouncement` under ``keys.worker_key`` with a TTL of a few
heartbeats and scores its name in ``keys.workers_key`` by when that lapses; it removes both when
it stops. A worker that dies simply lapses. The gateway reads the live ones to refuse a call
that no worker could serve (``NO_WORKER``) instead of queueing it forever, and ``GET /stats``
and the console show them. Stale members are trimmed by every announcement.
"""

import time
from typing import Any

import redis
from pydantic import BaseModel, Field

from factory import keys
from factory.jobs import now_ms

LAPSE_HEARTBEATS = 3


class WorkerAnnouncement(BaseModel):
    name: str
    host: str
    pid: int
    serves_all: bool = Field(description="serves every prefab deployed, now and later")
    prefabs: list[str] = Field(description="the prefabs it serves now")
    started_ms: int
    seen_ms: int = Field(default_factory=now_ms)

    def serves(self, prefab_id: str) -> bool:
        return self.serves_all or prefab_id in self.prefabs


def announce(client: redis.Redis, announcement: WorkerAnnouncement, heartbeat_s: float) -> None:
    ttl_s = max(1.0, heartbeat_s) * LAPSE_HEARTBEATS
    lapses_ms = now_ms() + int(ttl_s * 1000)
    with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker_key(announcement.name), announcement.model_dump_json(), px=int(ttl_s * 1000))
        pipe.zadd(keys.workers_key(), {announcement.name: lapses_ms})
        pipe.zremrangebyscore(keys.workers_key(), "-inf", now_ms())
        pipe.expire(keys.workers_key(), int(ttl_s) + 1)
        pipe.execute()


def withdraw(client: redis.Redis, name: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker_key(name))
        pipe.zrem(keys.workers_key(), name)
        pipe.execute()


def parse_live(names: list[Any], raw: list[Any]) -> list[WorkerAnnouncement]:
    """The announcements of live workers (ZRANGEBYSCORE now +inf, then MGET of their keys)."""
    found = []
    for value in raw:
        if value is not None:
            try:
                found.append(WorkerAnnouncement.model_validate_json(value))
            except ValueError:
                continue
    return found


def live_range() -> tuple[int, str]:
    """The score range of live members: from now on."""
    return int(time.time() * 1000), "+inf"
