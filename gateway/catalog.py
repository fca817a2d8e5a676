"""The gateway's view of the deployed catalog and of the live workers, kept current from Redis.

A background task reads the catalog's version counter every :data:`POLL_S` and reloads the
deployments only when it changed, so a version deployed or retired anywhere is routed here within
a fraction of a second, without a restart; a call naming something this view does not know yet
reloads once before it is refused. The live workers (``factory.presence``) are read at most once
per :data:`WORKERS_TTL_S` to refuse a call that no worker serves.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from factory.deployed import DeployedCatalog, Target
from factory.deployments import Deployment, parse_catalog
from factory.errors import NoWorker, PrefabNotFound
from factory.jobs import now_ms
from factory.presence import WorkerPresence, parse_presence
from factory.store import keys

logger = logging.getLogger(__name__)

POLL_S = 0.5
WORKERS_TTL_S = 1.0


class CatalogView:
    def __init__(
        self,
        client: aioredis.Redis,
        queue_without_worker: bool,
        on_change: Callable[[DeployedCatalog], None] = lambda catalog: None,
    ) -> None:
        self.client = client
        self.queue_without_worker = queue_without_worker
        self.on_change = on_change  # e.g. the OpenAPI document is regenerated
        self.current = DeployedCatalog()
        self.deployments: dict[str, Deployment] = {}
        self._version: object = b""
        self._workers: list[WorkerPresence] = []
        self._workers_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            version = await self.client.get(keys.deployments_version_key())
            if version == self._version and not force:
                return
            raw = await self.client.hgetall(keys.deployments_key())
            self.deployments = parse_catalog(raw)
            self.current = DeployedCatalog.build(self.deployments)
            self._version = version
            self.on_change(self.current)

    async def follow(self) -> None:
        """Reload on every change of the catalog, until cancelled.

        A cancel that lands in a Redis read can be swallowed there (some redis-py releases do, or
        turn it into a timeout, an ``OSError``): the task's pending cancel is checked after each
        reload, so a shutdown never waits on this loop.
        """
        task = asyncio.current_task()
        while True:
            with suppress(RedisError, OSError):
                await self.refresh()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(POLL_S)

    async def resolve(self, prefab_id: str | None, function_name: str, version: str | None) -> Target:
        """Route a call; reloads once before refusing an unknown name (it may have just been deployed)."""
        try:
            return self.current.resolve(prefab_id, function_name, version)
        except PrefabNotFound:
            await self.refresh(force=True)
            return self.current.resolve(prefab_id, function_name, version)

    async def workers(self) -> list[WorkerPresence]:
        """The live workers (read at most once a second)."""
        now = time.monotonic()
        if now - self._workers_at > WORKERS_TTL_S:
            names: list[bytes] = await self.client.zrangebyscore(keys.workers_key(), now_ms(), "+inf")  # type: ignore[assignment]
            async with self.client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hget(keys.worker_key(name.decode()), "presence")
                raw = await pipe.execute()
            self._workers = [w for w in map(parse_presence, raw) if w is not None]
            self._workers_at = now
        return self._workers

    async def check_served(self, prefab_id: str) -> None:
        """:class:`NoWorker` when no live worker serves the prefab (unless calls may wait in the queue)."""
        if self.queue_without_worker:
            return
        if any(worker.serves(prefab_id) for worker in await self.workers()):
            return
        self._workers_at = 0.0  # look again next time: one may have just started
        raise NoWorker(
            f"no live worker serves {prefab_id!r}: start one (factory worker) or retry later",
            details={"prefab_id": prefab_id},
            retry_after_s=5,
        )
