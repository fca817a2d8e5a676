"""The peer stack for one scenario: its FastAPI app under uvicorn and one Celery prefork worker on a
fresh Redis database, warmed up, stopped when the scenario is done (see :mod:`bench.peer_stack`).
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench import peer_stack
from bench.calls import events_path, host_port, invoke
from bench.context import Context
from bench.procs import Cluster, Proc, wait_http
from bench.sse_client import read_stream
from factory_cli.embedded_redis import free_port

WARMUP_JOBS = 4


@dataclass
class PeerStack:
    url: str
    app: Proc
    worker: Proc
    redis: aioredis.Redis


def start_app(cluster: Cluster, redis_url: str) -> Proc:
    port = free_port()
    proc = cluster.start_module("peer-app", "bench.peer_app", [str(port), redis_url], redis_url, port=port)
    wait_http(proc, "/readyz")
    return proc


async def warm_up(ctx: Context, url: str, jobs: int = WARMUP_JOBS) -> None:
    host, port = host_port(url)
    for _ in range(jobs):
        job_id = await invoke(ctx.caller, url, "firehose", {"count": 10})
        stats = await read_stream(host, port, events_path(job_id), timeout_s=60)
        if stats.terminal != "done":
            raise RuntimeError(f"peer warm-up job did not end with done: {stats.status} {stats.error}")


@asynccontextmanager
async def peer_stack_running(ctx: Context, concurrency: int = 1) -> AsyncIterator[PeerStack]:
    cluster = ctx.cluster
    url = cluster.new_db()
    started: list[Proc] = []
    client = aioredis.Redis.from_url(url)
    try:
        app = await asyncio.to_thread(start_app, cluster, url)
        started.append(app)
        worker = await asyncio.to_thread(peer_stack.start_worker, cluster, url, concurrency)
        started.append(worker)
        await warm_up(ctx, app.url, WARMUP_JOBS * concurrency)
        yield PeerStack(url, app, worker, client)
    finally:
        await asyncio.to_thread(cluster.stop, started)
        await client.flushdb()
        await client.aclose()
