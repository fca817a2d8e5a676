"""The gateway's periodic chores: the retention sweep of stored files, stale workspaces and old
deployment records (``factory.retention``, ``factory.registry``) and the lost-execution reaper
(``factory.reaper``).

Workers reap too; gateways do it as well so that a job whose workers all vanished still ends
with ``WORKER_LOST`` and its readers are released, even while no worker is left.

Every gateway runs the loop; a Redis lock lets one of them sweep the shared storage per
interval, while each sweeps the workspaces of its own ``state_dir`` (the one ``factory up``
and a compose volume share with the workers).
"""

import asyncio
import logging

import redis

from factory.connections import RETRYABLE
from factory.reaper import reap_once
from factory.registry import prune_retired
from factory.retention import sweep_once
from factory.settings import Settings
from factory.storage import Storage

logger = logging.getLogger(__name__)


async def sweep_forever(settings: Settings, storage: Storage, client: redis.Redis) -> None:
    """Sweep every ``sweep_interval_s``, until canceled."""
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            await asyncio.to_thread(
                sweep_once, storage, client, settings.state_dir, settings.retention_s, settings.sweep_interval_s
            )
            # Deployments retired (or failed) longer than the retention ago leave the catalog.
            await asyncio.to_thread(prune_retired, client, settings.retention_s)
        except Exception:  # a failed round (storage or Redis away) must not end the loop
            logger.exception("retention sweep failed")


async def reap_forever(settings: Settings, client: redis.Redis, owner: str) -> None:
    """Settle executions whose heartbeat lapsed, every ``worker_heartbeat_s``, until canceled."""
    while True:
        await asyncio.sleep(settings.worker_heartbeat_s)
        try:
            await asyncio.to_thread(reap_once, client, settings, owner)
        except RETRYABLE:
            logger.warning("reaper skipped a round: Redis unreachable")
        except Exception:  # a failed round must not end the loop
            logger.exception("reaper round failed")
