"""A factory for one scenario: gateways and workers on a fresh Redis database, warmed up,
and stopped when the scenario is done (so no scenario's processes compete with the next's).
"""

import asyncio
import resource
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bench.calls import events_path, host_port, invoke
from bench.context import Context
from bench.procs import Proc, tree_cpu_s
from bench.sse_client import read_stream
from factory.store import keys


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _redis_cpu_s(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class FactoryStack:
    url: str
    gateways: list[Proc]
    workers: list[Proc]
    redis: aioredis.Redis
    _cpu_start: dict[str, float] = field(default_factory=dict)

    @property
    def gateway(self) -> Proc:
        return self.gateways[0]

    async def _cpu_now(self) -> dict[str, float]:
        return {
            "gateways": sum(tree_cpu_s(p.pid) for p in self.gateways),
            # With their live children: a worker's work horse and runner live for many jobs.
            "workers": sum(tree_cpu_s(p.pid) for p in self.workers),
            "redis": await _redis_cpu_s(self.redis),
            "bench_client": _client_cpu_s(),
        }

    async def mark_cpu(self) -> None:
        """Start counting CPU seconds per role from now."""
        self._cpu_start = await self._cpu_now()

    async def cpu_used_s(self) -> dict[str, float]:
        """CPU seconds each role used since :meth:`mark_cpu` (workers include their work horses and runners)."""
        await asyncio.sleep(0.5)  # a job's last writes come just after its last event
        now = await self._cpu_now()
        return {role: round(now[role] - self._cpu_start.get(role, 0.0), 2) for role in now}


async def run_job(ctx: Context, gateway: Proc, function_name: str, inputs: dict[str, object]) -> None:
    """Invoke and read the stream to its end."""
    job_id = await invoke(ctx.caller, gateway.url, function_name, inputs)
    host, port = host_port(gateway.url)
    stats = await read_stream(host, port, events_path(job_id))
    if stats.terminal != "done":
        ended = f"HTTP {stats.status}, terminal {stats.terminal}, {stats.error}"
        raise RuntimeError(f"warm-up job {function_name} did not end with done: {ended}")


async def wait_presence(client: aioredis.Redis, workers: int, timeout_s: float = 60.0) -> None:
    """Until ``workers`` workers' presence records are live: a gateway refuses calls (NO_WORKER) before."""
    deadline = time.monotonic() + timeout_s
    while await client.zcount(keys.workers_key(), int(time.time() * 1000), "+inf") < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers' presence records did not appear within {timeout_s:g} s")
        await asyncio.sleep(0.05)


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
        await wait_presence(client, workers)
        for gateway in gateway_procs if workers else []:
            # One job first: a fresh gateway's first two readers at once can race (see docs/benchmark.md).
            await run_job(ctx, gateway, "firehose", {"count": 10})
        if workers:
            warm = [run_job(ctx, gateway_procs[0], "firehose", {"count": 10}) for _ in range(workers * 2)]
            await asyncio.gather(*warm)
        yield stack
    finally:
        await asyncio.to_thread(cluster.stop, started)  # a slow SIGTERM must not stall the client's loop
        await client.flushdb()
        await client.aclose()
