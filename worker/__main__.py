"""``python -m worker``: one worker process that takes jobs until told to stop."""

import logging
import os
import socket
import uuid

from rq import Queue
from rq.serializers import JSONSerializer

from factory import logs
from factory.catalog import Catalog
from factory.connections import redis_sync
from factory.settings import Settings, read_secret_values
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
    secrets = read_secret_values(prefabs.secret_names(catalog))
    client = redis_sync(settings.require_redis_url())
    return WorkerRuntime(settings, client, catalog, prefabs, secrets, FileBridge(), worker_name=name)


def main() -> None:
    settings = Settings.from_env()
    logs.configure("worker", settings.log_level, settings.log_json)
    name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    runtime = build_runtime(settings, name)
    install_runtime(runtime)
    connection = redis_sync(settings.require_redis_url(), socket_timeout_s=None)
    queue = Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)
    worker = FactoryWorker(
        [queue],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        job_monitoring_interval=max(1, int(settings.worker_heartbeat_s)),
    )
    worker.runtime = runtime
    logger.info("worker %s serving %d functions", name, len(runtime.prefabs.functions))
    worker.work(with_scheduler=False, logging_level=settings.log_level.upper())


if __name__ == "__main__":
    main()
