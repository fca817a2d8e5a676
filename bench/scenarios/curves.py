"""Scenario curves: how cost grows with load, as curves (``bench/plots.py`` draws them, ``make bench``
writes the PNGs under ``docs/curves/``).

- **callers**: 1, 10, 100, 1,000 concurrent callers, each calling ``firehose(100)`` and reading its
  stream to the end, again and again (one gateway, two workers; the peer stack with one app and a
  Celery worker of two processes, same client): time to first event p50/p99 and events/s delivered.
- **streams**: 100 → 10,000 open streams on one gateway (100 readers per job; jobs of
  ``firehose(100)`` queued while no worker runs, then two workers start): gateway RSS per open
  stream, and gateway CPU per 1,000 events delivered.
- **memory**: bytes Redis holds (``MEMORY USAGE`` of every key) and keys per finished job, for 1 → 1,000 events per job
  (factory and peer), at the default retention: every finished job stays this big for that long.
- **workers**: jobs/s on 1 → 8 worker processes for sleep-bound (``sleepy``) and CPU-bound
  (``spin``) jobs.
"""

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from bench.calls import events_path, final_records, host_port, invoke, submit_many
from bench.context import Context
from bench.idle import open_idle, settle_rss_kb
from bench.peer_run import peer_stack_running
from bench.results import Figure, ScenarioResult, percentile
from bench.scenarios.peer import batch
from bench.sse_client import read_stream
from bench.stack import factory_stack

NAME = "curves"
CALLS_PER_LEVEL = 200  # at least this many calls per caller count, and one per caller
EVENTS_PER_CALL = 100
READERS_PER_JOB = 100
TIMEOUT_S = 300.0


async def _callers(ctx: Context, url: str, callers: int) -> dict[str, float]:
    rounds = max(1, CALLS_PER_LEVEL // callers)
    host, port = host_port(url)
    ttfe: list[float] = []
    events = 0

    async def caller() -> None:
        nonlocal events
        for _ in range(rounds):
            began_ns = time.time_ns()
            job_id = await invoke(ctx.caller, url, "firehose", {"count": EVENTS_PER_CALL})
            stats = await read_stream(host, port, events_path(job_id), timeout_s=TIMEOUT_S)
            if stats.terminal != "done":
                raise RuntimeError(f"a call ended without done: {stats.status} {stats.error}")
            ttfe.append((stats.first_event_ns - began_ns) / 1e6)
            events += stats.events

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    span_s = time.perf_counter() - began
    return {
        "callers": callers,
        "calls": callers * rounds,
        "ttfe_p50_ms": percentile(ttfe, 50),
        "ttfe_p99_ms": percentile(ttfe, 99),
        "events_per_s": events / span_s,
        "calls_per_s": callers * rounds / span_s,
    }


async def callers_curve(ctx: Context) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {"factory": [], "peer": []}
    async with factory_stack(ctx, workers=2) as stack:
        for n in ctx.sizes.curve_callers:
            out["factory"].append(await _callers(ctx, stack.gateway.url, n))
    async with peer_stack_running(ctx, concurrency=2) as peer:
        for n in ctx.sizes.curve_callers:
            out["peer"].append(await _callers(ctx, peer.app.url, n))
    return out


async def _streams(ctx: Context, streams: int) -> dict[str, float]:
    async with factory_stack(ctx, workers=0, FACTORY_QUEUE_WITHOUT_WORKER="1") as stack:
        url = stack.gateway.url
        host, port = host_port(url)
        jobs = -(-streams // READERS_PER_JOB)
        job_ids = await submit_many(ctx.caller, [url], "firehose", {"count": EVENTS_PER_CALL}, jobs)
        paths = [events_path(job_ids[n % jobs]) for n in range(streams)]
        await open_idle(host, port, paths[:1])  # a fresh gateway's first reader alone (docs/benchmark.md)
        before_kb = await settle_rss_kb(stack.gateway.pid, 1.0)
        held = [*await open_idle(host, port, paths[1:])]
        after_kb = await settle_rss_kb(stack.gateway.pid, 1.0)
        cpu_before = stack.gateway.cpu_s()
        began = time.perf_counter()
        workers = await asyncio.to_thread(ctx.cluster.start_workers, stack.url, 2)
        try:
            done = [asyncio.wait_for(asyncio.shield(p.done), TIMEOUT_S) for p in held]
            await asyncio.gather(*done)
            span_s = time.perf_counter() - began
        finally:
            await asyncio.to_thread(ctx.cluster.stop, workers)
        await asyncio.sleep(0.3)
        cpu_s = stack.gateway.cpu_s() - cpu_before
        delivered = sum(p.stats.events for p in held)
        incomplete = sum(1 for p in held if p.stats.terminal != "done")
    return {
        "streams": streams,
        "rss_per_stream_kb": (after_kb - before_kb) / max(streams - 1, 1),
        "gateway_rss_mb": after_kb / 1024,
        "events_delivered": delivered,
        "gateway_cpu_s": cpu_s,
        "gateway_cpu_ms_per_1000_events": cpu_s * 1000 / (delivered / 1000) if delivered else float("nan"),
        "events_per_s": delivered / span_s,
        "incomplete": incomplete,
    }


async def streams_curve(ctx: Context) -> list[dict[str, float]]:
    return [await _streams(ctx, n) for n in ctx.sizes.curve_streams]


async def _db_bytes(client: aioredis.Redis) -> tuple[int, int]:
    """Bytes Redis holds for the keys of this database (``MEMORY USAGE``, exact), and their number."""
    names = [name async for name in client.scan_iter(count=1000)]
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.memory_usage(name, samples=0)
        sizes = await pipe.execute()
    return sum(int(size or 0) for size in sizes), len(names)


async def _memory(ctx: Context, url: str, client: aioredis.Redis, events: int) -> dict[str, float]:
    jobs = 200 if events <= 100 else 50
    mem0, keys0 = await _db_bytes(client)
    result = await batch(ctx, url, "firehose", {"count": events}, jobs)
    if result["not_done"]:
        raise RuntimeError(f"{result['not_done']} jobs of {events} events did not end with done: {result['errors']}")
    await asyncio.sleep(0.5)  # a worker's last writes after the terminal event (job record, RQ's own)
    mem1, keys1 = await _db_bytes(client)
    return {"events_per_job": events, "bytes_per_job": (mem1 - mem0) / jobs, "keys_per_job": (keys1 - keys0) / jobs}


async def memory_curve(ctx: Context) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {"factory": [], "peer": []}
    async with factory_stack(ctx, workers=2) as stack:
        for events in ctx.sizes.curve_events_per_job:
            out["factory"].append(await _memory(ctx, stack.gateway.url, stack.redis, events))
    async with peer_stack_running(ctx, concurrency=2) as peer:
        for events in ctx.sizes.curve_events_per_job:
            out["peer"].append(await _memory(ctx, peer.app.url, peer.redis, events))
    return out


async def _rate(
    ctx: Context, stack_url: str, redis: aioredis.Redis, fn: str, inputs: dict[str, Any], jobs: int
) -> float:
    began_ms = time.time() * 1000
    job_ids = await submit_many(ctx.caller, [stack_url], fn, inputs, jobs)
    records = await final_records(redis, job_ids, TIMEOUT_S)
    if any(r.status != "finished" for r in records):
        raise RuntimeError(f"a {fn} job did not finish")
    return len(records) / ((max(r.ended_ms or 0 for r in records) - began_ms) / 1000)


async def workers_curve(ctx: Context) -> list[dict[str, float]]:
    sizes = ctx.sizes
    out: list[dict[str, float]] = []
    sleep_s = sizes.curve_cpu_s  # the same length for both kinds
    for n in sizes.curve_workers:
        async with factory_stack(ctx, workers=n) as stack:
            url = stack.gateway.url
            sleep_rate = await _rate(
                ctx, url, stack.redis, "sleepy", {"seconds": sleep_s}, 4 * max(sizes.curve_workers)
            )
            cpu_rate = await _rate(ctx, url, stack.redis, "spin", {"seconds": sizes.curve_cpu_s}, 16)
        out.append({"workers": n, "sleep_jobs_per_s": sleep_rate, "cpu_jobs_per_s": cpu_rate, "job_s": sleep_s})
    return out


async def run(ctx: Context) -> ScenarioResult:
    details: dict[str, Any] = {
        "callers": await callers_curve(ctx),
        "streams": await streams_curve(ctx),
        "memory": await memory_curve(ctx),
        "workers": await workers_curve(ctx),
    }
    figures: list[Figure] = []
    peer_by_n = {row["callers"]: row for row in details["callers"]["peer"]}
    for row in details["callers"]["factory"]:
        n = int(row["callers"])
        peer_row = peer_by_n.get(n, {})
        figures += [
            Figure(
                NAME,
                f"first event p50 @{n} callers",
                row["ttfe_p50_ms"],
                "ms",
                "peer stack",
                peer_row.get("ttfe_p50_ms"),
            ),
            Figure(
                NAME,
                f"first event p99 @{n} callers",
                row["ttfe_p99_ms"],
                "ms",
                "peer stack",
                peer_row.get("ttfe_p99_ms"),
            ),
            Figure(
                NAME,
                f"events/s delivered @{n} callers",
                row["events_per_s"],
                "ev/s",
                "peer stack",
                peer_row.get("events_per_s"),
            ),
        ]
    for row in details["streams"]:
        n = int(row["streams"])
        figures += [
            Figure(NAME, f"gateway RSS per stream @{n} streams", row["rss_per_stream_kb"], "KB"),
            Figure(NAME, f"gateway CPU per 1,000 events @{n} streams", row["gateway_cpu_ms_per_1000_events"], "ms"),
        ]
    peer_mem = {row["events_per_job"]: row for row in details["memory"]["peer"]}
    for row in details["memory"]["factory"]:
        e = int(row["events_per_job"])
        base = peer_mem.get(e, {}).get("bytes_per_job")
        figures.append(
            Figure(NAME, f"redis bytes per finished job @{e} events", row["bytes_per_job"], "B", "peer stack", base)
        )
    one = details["workers"][0]
    for row in details["workers"]:
        n = int(row["workers"])
        figures += [
            Figure(
                NAME,
                f"sleep-bound jobs/s @{n} workers",
                row["sleep_jobs_per_s"],
                "jobs/s",
                "1 worker",
                one["sleep_jobs_per_s"],
            ),
            Figure(
                NAME,
                f"CPU-bound jobs/s @{n} workers",
                row["cpu_jobs_per_s"],
                "jobs/s",
                "1 worker",
                one["cpu_jobs_per_s"],
            ),
        ]
    return ScenarioResult(NAME, figures, details)
