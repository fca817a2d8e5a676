"""A factory for one scenario: gateways and workers on a fresh Redis database, warmed up,
and stopped when the scenario is done (so no scenario's processes compete with the next's).
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench.calls import events_path, host_port, invoke
from bench.context import Context
from bench.procs import Proc
from bench.sse_client import read_stream


@dataclass
class FactoryStack:
    url: str
    gateways: list[Proc]
    workers: list[Proc]
    redis: aioredis.Redis

    @property
    def gateway(self) -> Proc:
        return self.gateways[0]


async def run_job(ctx: Context, gateway: Proc, function_name: str, inputs: dict[str, object]) -> None:
    """Invoke and read the stream to its end."""
    job_id = await invoke(ctx.http, gateway.url, function_name, inputs)
    host, port = host_port(gateway.url)
    stats = await read_stream(host, port, events_path(job_id))
    if stats.terminal != "done":
        ended = f"HTTP {stats.status}, terminal {stats.terminal}, {stats.error}"
        raise RuntimeError(f"warm-up job {function_name} did not end with done: {ended}")


@asynccontextmanager
async def factory_stack(ctx: Context, gateways: int = 1, workers: int = 1, **env: str) -> AsyncIterator[FactoryStack]:
    cluster = ctx.cluster
    url = cluster.new_db()
    started: list[Proc] = []
    client = aioredis.Redis.from_url(url)
    try:
        gateway_procs = [await asyncio.to_thread(cluster.start_gateway, url, **env) for _ in range(gateways)]
        started += gateway_procs
        worker_procs = await asyncio.to_thread(cluster.start_workers, url, workers, **env) if workers else []
        started += worker_procs
        stack = FactoryStack(url, gateway_procs, worker_procs, client)
        for gateway in gateway_procs if workers else []:
            # One job first: a fresh gateway's first two readers at once can race (see docs/benchmark.md).
            await run_job(ctx, gateway, "firehose", {"count": 10})
        if workers:
            warm = [run_job(ctx, gateway_procs[0], "firehose", {"count": 10}) for _ in range(workers * 2)]
            await asyncio.gather(*warm)
        yield stack
    finally:
        cluster.stop(started)
        await client.flushdb()
        await client.aclose()
