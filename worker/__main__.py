"""``python -m worker``: one worker process that takes jobs until told to stop (see ``worker.engine``)."""

import logging
import os
import socket
import sys
import uuid

from factory import logs
from factory.connections import redis_sync
from factory.hardening import make_undumpable
from factory.registry import read_all, register_folders
from factory.retention import sweep_workspaces
from factory.settings import FACTORY_CREDENTIAL_VARS, Settings
from factory.storage import storage_from_settings
from factory.store.wire import Wire
from worker.engine import Engine
from worker.files import FileBridge
from worker.presence import Presence
from worker.provision import Provisioner, ProvisionError
from worker.runner import WorkerRuntime

logger = logging.getLogger(__name__)


def build_runtime(settings: Settings, name: str) -> WorkerRuntime:
    """Connect, deploy the configured prefab folders, and keep the credentials from prefab code."""
    # The worker keeps its environment for the secrets prefabs declare (handed to their runner one
    # job at a time); the factory's own credentials are never a prefab's.
    environ = dict(os.environ)
    secrets = {name: value for name, value in environ.items() if name not in FACTORY_CREDENTIAL_VARS}
    url = settings.require_redis_url()
    client = redis_sync(url)
    storage = storage_from_settings(settings)
    files = FileBridge(settings, storage, client)
    register_folders(client, settings)
    # Workspaces a killed worker left behind; each machine's workers sweep their own state_dir.
    sweep_workspaces(settings.state_dir, client, settings.retention_s)
    provisioner = Provisioner(settings, client, storage, environ)
    # Environments no deployment uses any more (retired longer than the retention ago) leave this machine.
    removed = provisioner.sweep_environments(list(read_all(client).values()), settings.retention_s)
    if removed:
        logger.info("removed %d unused prefab environments", len(removed))
    return WorkerRuntime(settings, client, provisioner, secrets, files, Wire(url), worker_name=name)


def _worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def main() -> None:
    settings = Settings.from_env()
    logs.configure("worker", settings.log_level, settings.log_json)
    make_undumpable()
    if settings.worker_lost_after_s < 2 * max(1.0, settings.worker_heartbeat_s):
        logger.warning(
            "worker_lost_after_s (%g s) is under two heartbeats (%g s each): running jobs may be taken for lost",
            settings.worker_lost_after_s,
            settings.worker_heartbeat_s,
        )
    name = _worker_name()
    try:
        runtime = build_runtime(settings, name)
    except ProvisionError as exc:  # the machine cannot run prefabs as configured: say why, once
        logger.error("worker cannot start: %s", exc)
        sys.exit(2)
    blocking = redis_sync(settings.require_redis_url(), socket_timeout_s=None)  # for the blocking pop
    engine = Engine(settings, runtime, blocking)
    engine.jobs.queues.refresh()
    presence = Presence(settings, name, engine.jobs.queues, set(runtime.secrets)).start()
    try:
        engine.run()
    finally:
        presence.stop()


if __name__ == "__main__":
    main()
