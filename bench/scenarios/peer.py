"""Scenario peer: the factory against the stack a team would build instead (FastAPI + Celery prefork
+ a Redis list and channel per job, relayed as SSE: :mod:`bench.peer_stack`, :mod:`bench.peer_app`),
the same client, the same run, one HTTP process each.

- Time to first event, ``firehose(count=1)``, calls one after another, the three forms interleaved
  call by call (so drift in the machine's load hits all three alike): the two-request form on both
  (``POST /invoke`` → the first ``data:`` line of ``GET /jobs/{id}/events``), and the factory's
  seed form (``POST /invoke/{prefab}/{fn}`` answering with the stream) → its first ``data:`` line.
  One factory worker, one Celery process.
- One stream: ``firehose(20,000)``, ``POST /invoke`` → last event parsed, events/s.
- Trivial jobs/s through HTTP: N ``trivial()`` calls, each POSTed and its stream read to its
  terminal event, 64 submits in flight; 2 factory workers against a Celery worker of 2 processes.
- Many jobs: N ``firehose(100)`` submitted at once (64 submits in flight), every stream read;
  events/s to the last terminal event, and every event checked (lost, repeated, out of order).
  Both batches record the CPU each role used (HTTP process, workers with all their children, Redis).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.calls import PREFAB, OrderCheck, events_path, host_port, invoke
from bench.context import Context
from bench.peer_run import peer_stack_running
from bench.procs import tree_cpu_s
from bench.results import Figure, ScenarioResult, Target, percentile
from bench.sse_client import StreamStats, read_stream
from bench.stack import factory_stack

NAME = "peer"
SUBMIT_CONCURRENCY = 64
TIMEOUT_S = 300.0
PEER = "peer stack"


async def two_request_ms(ctx: Context, url: str) -> float:
    """``POST /invoke`` → first event of ``GET /jobs/{id}/events``, in ms."""
    host, port = host_port(url)
    began_ns = time.time_ns()
    job_id = await invoke(ctx.caller, url, "firehose", {"count": 1})
    stats = await read_stream(host, port, events_path(job_id), timeout_s=60)
    if not stats.events:
        raise RuntimeError(f"{url}: job {job_id} streamed no event: {stats.status} {stats.error}")
    return (stats.first_event_ns - began_ns) / 1e6


async def seed_form_ms(ctx: Context, url: str) -> float:
    """The seed's one request: ``POST /invoke/{prefab}/firehose`` answers with the stream."""
    host, port = host_port(url)
    body = orjson.dumps({"inputs": {"count": 1}})
    stats = await read_stream(host, port, f"/invoke/{PREFAB}/firehose", timeout_s=60, body=body)
    if not stats.events:
        raise RuntimeError(f"the seed form streamed no event: HTTP {stats.status} {stats.error}")
    return (stats.first_event_ns - stats.opened_ns) / 1e6


async def one_stream_rate(ctx: Context, url: str, count: int) -> tuple[float, int]:
    host, port = host_port(url)
    check = OrderCheck(count)
    began_ns = time.time_ns()
    job_id = await invoke(ctx.caller, url, "firehose", {"count": count})
    stats = await read_stream(host, port, events_path(job_id), check, timeout_s=TIMEOUT_S)
    lost = check.missing + check.repeated + check.out_of_order
    return stats.events / ((stats.last_event_ns - began_ns) / 1e9), lost


async def batch(ctx: Context, url: str, function_name: str, inputs: dict[str, Any], jobs: int) -> dict[str, Any]:
    """``jobs`` calls submitted at once (64 in flight), each stream read to its end."""
    gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    host, port = host_port(url)
    expected = int(inputs.get("count", 0))

    async def one(check: OrderCheck) -> StreamStats:
        async with gate:
            job_id = await invoke(ctx.caller, url, function_name, inputs)
        return await read_stream(host, port, events_path(job_id), check, timeout_s=TIMEOUT_S)

    checks = [OrderCheck(expected) for _ in range(jobs)]
    began_ns = time.time_ns()
    stats = await asyncio.gather(*(one(c) for c in checks))
    span_s = (max(s.last_event_ns for s in stats) - began_ns) / 1e9
    events = sum(s.events for s in stats)
    return {
        "jobs": jobs,
        "elapsed_s": span_s,
        "jobs_per_s": jobs / span_s,
        "events_received": events,
        "events_per_s": events / span_s,
        "lost": sum(c.missing for c in checks),
        "repeated": sum(c.repeated + s.repeats for c, s in zip(checks, stats, strict=True)),
        "out_of_order": sum(c.out_of_order for c in checks),
        "not_done": sum(1 for s in stats if s.terminal != "done"),
        "errors": sorted({s.error for s in stats if s.error})[:5],
    }


class CpuMeter:
    """CPU seconds per role (process trees, and Redis from its INFO) over one measured batch."""

    def __init__(self, redis: aioredis.Redis, roles: dict[str, list[int]]) -> None:
        self._redis, self._roles = redis, roles
        self._start: dict[str, float] = {}

    async def _now(self) -> dict[str, float]:
        info = await self._redis.info("cpu")
        now = {role: sum(tree_cpu_s(pid) for pid in pids) for role, pids in self._roles.items()}
        now["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return now

    async def start(self) -> None:
        self._start = await self._now()

    async def used(self) -> dict[str, float]:
        await asyncio.sleep(0.3)  # the last job's end is written just after its terminal event
        now = await self._now()
        return {role: round(now[role] - self._start[role], 3) for role in now}


async def metered_batch(
    ctx: Context, url: str, meter: CpuMeter, function_name: str, inputs: dict[str, Any], jobs: int
) -> dict[str, Any]:
    await meter.start()
    result = await batch(ctx, url, function_name, inputs, jobs)
    result["cpu_s"] = await meter.used()
    result["cpu_ms_per_job"] = {role: s * 1000 / jobs for role, s in result["cpu_s"].items()}
    return result


def _summary(times: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99), "max_ms": max(times, default=0.0)}


async def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    forms: dict[str, list[float]] = {"factory": [], "peer": [], "factory seed form": []}
    async with factory_stack(ctx) as factory, peer_stack_running(ctx) as peer:
        fu, pu = factory.gateway.url, peer.app.url
        measure: dict[str, Callable[[], Awaitable[float]]] = {
            "factory": lambda: two_request_ms(ctx, fu),
            "peer": lambda: two_request_ms(ctx, pu),
            "factory seed form": lambda: seed_form_ms(ctx, fu),
        }
        for name in measure:  # a few unmeasured calls of each form first
            for _ in range(5):
                await measure[name]()
        for _ in range(sizes.peer_calls):
            for name, one in measure.items():
                forms[name].append(await one())
        f_rate, f_bad = await one_stream_rate(ctx, fu, sizes.peer_stream)
        p_rate, p_bad = await one_stream_rate(ctx, pu, sizes.peer_stream)
    async with factory_stack(ctx, workers=2) as factory:
        roles = {"http": [g.pid for g in factory.gateways], "workers": [w.pid for w in factory.workers]}
        meter = CpuMeter(factory.redis, roles)
        f_trivial = await metered_batch(ctx, factory.gateway.url, meter, "trivial", {}, sizes.peer_trivial_jobs)
        f_many = await metered_batch(ctx, factory.gateway.url, meter, "firehose", {"count": 100}, sizes.peer_many_jobs)
    async with peer_stack_running(ctx, concurrency=2) as peer:
        meter = CpuMeter(peer.redis, {"http": [peer.app.pid], "workers": [peer.worker.pid]})
        p_trivial = await metered_batch(ctx, peer.app.url, meter, "trivial", {}, sizes.peer_trivial_jobs)
        p_many = await metered_batch(ctx, peer.app.url, meter, "firehose", {"count": 100}, sizes.peer_many_jobs)
    ttfe = {name: _summary(times) for name, times in forms.items()}
    f, p, s = ttfe["factory"], ttfe["peer"], ttfe["factory seed form"]
    two = f"{PEER}, two requests"
    bad = f_many["lost"] + f_many["repeated"] + f_many["out_of_order"] + f_bad
    figures = [
        Figure(NAME, "first event p50, two requests", f["p50_ms"], "ms", two, p["p50_ms"], Target("ratio", "<=", 0.8)),
        Figure(NAME, "first event p99, two requests", f["p99_ms"], "ms", two, p["p99_ms"], Target("ratio", "<=", 1.0)),
        Figure(
            NAME,
            "first event p50, seed form (one request)",
            s["p50_ms"],
            "ms",
            two,
            p["p50_ms"],
            Target("ratio", "<=", 0.6),
        ),
        Figure(NAME, "first event p99, seed form (one request)", s["p99_ms"], "ms", two, p["p99_ms"]),
        Figure(
            NAME, f"one stream of {sizes.peer_stream} events", f_rate, "ev/s", PEER, p_rate, Target("ratio", ">=", 4.0)
        ),
        Figure(
            NAME,
            f"{sizes.peer_trivial_jobs} trivial jobs through HTTP, 2 workers",
            f_trivial["jobs_per_s"],
            "jobs/s",
            f"{PEER}, 2 Celery processes",
            p_trivial["jobs_per_s"],
            Target("ratio", ">=", 1.0),
        ),
        Figure(
            NAME,
            f"{sizes.peer_many_jobs} jobs × 100 events, 2 workers",
            f_many["events_per_s"],
            "ev/s",
            f"{PEER}, 2 Celery processes",
            p_many["events_per_s"],
            Target("ratio", ">=", 2.0),
        ),
        Figure(
            NAME, "factory events lost + repeated + out of order", float(bad), "events", target=Target("value", "<=", 0)
        ),
    ]
    details = {
        "calls_per_form": sizes.peer_calls,
        "first_event": ttfe,
        "one_stream": {"events": sizes.peer_stream, "factory_ev_s": f_rate, "peer_ev_s": p_rate, "peer_bad": p_bad},
        "trivial": {"factory": f_trivial, "peer": p_trivial},
        "many_jobs": {"factory": f_many, "peer": p_many},
        "lost": f_many["lost"] + f_trivial["lost"],
        "repeated": f_many["repeated"] + f_trivial["repeated"],
        "out_of_order": f_many["out_of_order"] + f_trivial["out_of_order"],
    }
    return ScenarioResult(NAME, figures, details)
