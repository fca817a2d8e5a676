"""``python -m worker``: one worker process that takes jobs until told to stop.

RQ's work loop ends on some Redis failures (outside its own reconnect loop); when it ends
without a stop signal, :func:`serve` starts a new loop (a new RQ worker name) with backoff.
"""

import logging
import os
import signal
import socket
import time
import uuid
from types import FrameType

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from factory import logs
from factory.catalog import Catalog
from factory.connections import RETRYABLE, redis_sync
from factory.retention import sweep_workspaces
from factory.settings import FACTORY_CREDENTIAL_VARS, STORAGE_CREDENTIAL_VARS, Settings, read_secret_values
from factory.storage import storage_from_settings
from worker.files import FileBridge
from worker.loader import import_prefabs
from worker.rq_worker import FactoryWorker
from worker.runner import WorkerRuntime
from worker.tasks import install_runtime

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


def make_worker(settings: Settings, runtime: WorkerRuntime, connection: redis.Redis) -> FactoryWorker:
    """A fresh RQ worker (a new name) on the factory's queue."""
    runtime.worker_name = _worker_name()
    queue = Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)
    return FactoryWorker(
        [queue],
        connection=connection,
        serializer=JSONSerializer,
        name=runtime.worker_name,
        job_monitoring_interval=max(1, int(settings.worker_heartbeat_s)),
        runtime=runtime,
    )


def _pause_unless_stopped(delay_s: float) -> bool:
    """Sleep; True if SIGTERM or SIGINT came meanwhile."""
    stopped: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopped.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    deadline = time.monotonic() + delay_s
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(stopped)


def serve(settings: Settings, runtime: WorkerRuntime) -> None:
    """Take jobs until told to stop, starting RQ's work loop again whenever it ends on its own."""
    connection = redis_sync(settings.require_redis_url(), socket_timeout_s=None)
    delay_s = 1.0
    while True:
        worker = make_worker(settings, runtime, connection)
        logger.info("worker %s serving %d functions", worker.name, len(runtime.prefabs.functions))
        try:
            worker.work(with_scheduler=False, logging_level=settings.log_level.upper())
        except RETRYABLE as exc:
            logger.error("the work loop lost Redis: %s", exc)
        if worker.stop_signalled:
            return
        logger.warning("the work loop ended without a stop request; starting it again in %.0f s", delay_s)
        if _pause_unless_stopped(delay_s):
            return
        delay_s = min(delay_s * 2, 30.0)


def main() -> None:
    settings = Settings.from_env()
    logs.configure("worker", settings.log_level, settings.log_json)
    if settings.worker_lost_after_s < 2 * max(1.0, settings.worker_heartbeat_s):
        logger.warning(
            "worker_lost_after_s (%g s) is under two heartbeats (%g s each): running jobs may be taken for lost",
            settings.worker_lost_after_s,
            settings.worker_heartbeat_s,
        )
    runtime = build_runtime(settings, _worker_name())
    install_runtime(runtime)
    serve(settings, runtime)


if __name__ == "__main__":
    main()
