"""Celery with a Redis broker, for comparison: a prefork pool and a task that only records when it ran.

The app is built by :func:`make_app` (nothing at import time); ``python -m bench.celery_baseline
URL CONCURRENCY`` runs a worker with that many pool processes on the bench's Celery queue.
"""

import os
import sys
import time

import redis
from celery import Celery

from bench import keys

TASK = "bench.mark"


def make_app(broker_url: str) -> Celery:
    app = Celery("bench", broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=keys.celery_queue(),
        worker_hijack_root_logger=True,
        broker_connection_retry_on_startup=True,
    )
    clients: dict[int, redis.Redis] = {}  # one per pool process, made after the fork

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    def mark(sent_ns: int, key: str) -> None:
        start_ns = time.time_ns()
        client = clients.get(os.getpid())
        if client is None:
            client = clients[os.getpid()] = redis.Redis.from_url(broker_url)
        client.rpush(key, f"{sent_ns} {start_ns} {time.time_ns()}")

    return app


def enqueue(app: Celery, key: str) -> None:
    app.send_task(TASK, args=[time.time_ns(), key], queue=keys.celery_queue())


def run_worker(app: Celery, queue: str, concurrency: str) -> None:
    """Run a Celery prefork worker on ``queue`` in this process, as both Celery baselines do."""
    app.worker_main(
        argv=[
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def main() -> None:
    url, concurrency = sys.argv[1], sys.argv[2]
    run_worker(make_app(url), keys.celery_queue(), concurrency)


if __name__ == "__main__":
    main()
