"""``python -m worker``: one worker process that takes jobs until told to stop (see ``worker.engine``)."""

import logging
import os
import socket
import uuid

from factory import logs
from factory.catalog import Catalog
from factory.connections import redis_sync
from factory.retention import sweep_workspaces
from factory.settings import FACTORY_CREDENTIAL_VARS, STORAGE_CREDENTIAL_VARS, Settings, read_secret_values
from factory.storage import storage_from_settings
from worker.engine import Engine
from worker.files import FileBridge
from worker.loader import import_prefabs
from worker.presence import Presence
from worker.runner import WorkerRuntime

logger = logging.getLogger(__name__)


def build_runtime(settings: Settings, name: str) -> WorkerRuntime:
    """Load and import the prefabs, take the secrets out of the environment, connect."""
    catalog = Catalog.discover(settings.prefabs)
    prefabs = import_prefabs(catalog)
    # The storage credentials leave the environment too: a function sees them only if it declares them.
    secrets = read_secret_values(prefabs.secret_names(catalog) | STORAGE_CREDENTIAL_VARS)
    read_secret_values(set(FACTORY_CREDENTIAL_VARS - prefabs.secret_names(catalog)))  # never a function's
    client = redis_sync(settings.require_redis_url())
    files = FileBridge(settings, storage_from_settings(settings), client)
    # Workspaces a killed worker left behind; each machine's workers sweep their own state_dir.
    sweep_workspaces(settings.state_dir, client, settings.retention_s)
    return WorkerRuntime(settings, client, catalog, prefabs, secrets, files, worker_name=name)


def _worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def main() -> None:
    settings = Settings.from_env()
    logs.configure("worker", settings.log_level, settings.log_json)
    if settings.worker_lost_after_s < 2 * max(1.0, settings.worker_heartbeat_s):
        logger.warning(
            "worker_lost_after_s (%g s) is under two heartbeats (%g s each): running jobs may be taken for lost",
            settings.worker_lost_after_s,
            settings.worker_heartbeat_s,
        )
    name = _worker_name()
    runtime = build_runtime(settings, name)
    blocking = redis_sync(settings.require_redis_url(), socket_timeout_s=None)  # for the blocking pop
    served = [entry.manifest.id for entry in runtime.catalog.loaded() if entry.manifest]
    presence = Presence(settings, name, served, sorted(runtime.secrets)).start()
    try:
        Engine(settings, runtime, blocking).run()
    finally:
        presence.stop()


if __name__ == "__main__":
    main()
