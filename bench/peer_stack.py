"""The peer stack's worker side: what a team would build instead of the factory, written carefully.

The common tutorial stack is FastAPI + Celery (prefork, Redis broker) + a Redis list and a pub/sub
channel per job, relayed as SSE (the HTTP side is :mod:`bench.peer_app`). Here is its Celery task:
it runs the same ``bench-kit`` generator functions the factory runs, and for every event sends one
pipeline that ``RPUSH``es the event's compact JSON to the job's list and ``PUBLISH``es
``<index>\\n<event JSON>`` on the job's channel (the index is the event's position in the list,
from 1). A function that returns instead of yielding gets one ``done`` event carrying its result,
as the factory's non-streaming calls do. The list expires after the same retention as the factory's
job logs, set in the first event's pipeline.

Celery runs with its defaults where a team would keep them (early acknowledgement, prefetch ×4,
JSON), no result backend (the events are the result), and without gossip, mingle and heartbeats,
the usual advice for a Redis broker.

``python -m bench.peer_stack REDIS_URL CONCURRENCY`` runs a prefork worker on the peer queue.
"""

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import redis
from celery import Celery

from bench import keys
from bench.celery_baseline import run_worker
from bench.procs import BENCH_PREFABS, Cluster, Proc, wait_log

TASK = "bench.peer.run"
RETENTION_S = 24 * 3600  # the factory's default FACTORY_RETENTION_S
PREFAB_MAIN = BENCH_PREFABS / "bench-kit" / "src" / "main.py"


def _load_prefab(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_bench_kit", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_app(broker_url: str) -> Celery:
    app = Celery("peer", broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=keys.peer_queue(),
        worker_hijack_root_logger=True,
        broker_connection_retry_on_startup=True,
    )
    state: dict[str, Any] = {}  # per pool process, filled after the fork

    def client() -> redis.Redis:
        if state.get("pid") != os.getpid():
            state["pid"] = os.getpid()
            state["redis"] = redis.Redis.from_url(broker_url)
            state["prefab"] = _load_prefab(PREFAB_MAIN)
        conn: redis.Redis = state["redis"]
        return conn

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    def run(job_id: str, function_name: str, inputs: dict[str, Any]) -> None:
        conn = client()
        function: Callable[..., Any] = getattr(state["prefab"], function_name)
        list_key, channel = keys.peer_events_key(job_id), keys.peer_channel(job_id)
        index = 0

        def emit(event: dict[str, Any]) -> None:
            nonlocal index
            index += 1
            raw = orjson.dumps(event)
            pipe = conn.pipeline(transaction=False)
            pipe.rpush(list_key, raw)
            if index == 1:
                pipe.expire(list_key, RETENTION_S)
            pipe.publish(channel, b"%d\n%s" % (index, raw))
            pipe.execute()

        try:
            if inspect.isgeneratorfunction(function):
                for event in function(**inputs):
                    emit(event)
            else:
                emit({"type": "done", "data": function(**inputs)})
        except Exception as exc:  # the caller sees a terminal error event, as the factory's do
            emit({"type": "error", "data": {"message": str(exc)}, "error_code": "UNEXPECTED_ERROR"})

    return app


def submit(app: Celery, job_id: str, function_name: str, inputs: dict[str, Any]) -> None:
    app.send_task(TASK, args=[job_id, function_name, inputs], task_id=job_id, queue=keys.peer_queue())


def start_worker(cluster: Cluster, redis_url: str, concurrency: int) -> Proc:
    """A Celery prefork worker with ``concurrency`` pool processes, returned once it is ready."""
    proc = cluster.start_module("peer-celery", "bench.peer_stack", [redis_url, str(concurrency)], redis_url)
    wait_log(proc, " ready.")
    return proc


def main() -> None:
    url, concurrency = sys.argv[1], sys.argv[2]
    run_worker(make_app(url), keys.peer_queue(), concurrency)


if __name__ == "__main__":
    main()
