"""Baselines measured on the no-factory server (``bench.baseline_app``): one stream, a paced
stream, fan-out to many readers, and idle streams.

Each measurement starts the server, measures, and stops it, so nothing else runs meanwhile.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bench import idle
from bench.calls import OrderCheck
from bench.context import Context
from bench.procs import Proc, wait_http
from bench.results import percentile
from bench.sse_client import read_stream
from factory_cli.embedded_redis import HOST, free_port


@asynccontextmanager
async def baseline_server(ctx: Context) -> AsyncIterator[Proc]:
    cluster = ctx.cluster
    port = free_port()
    proc = cluster.start_module("baseline-app", "bench.baseline_app", [str(port)], cluster.new_db(), port=port)
    try:
        await asyncio.to_thread(wait_http, proc, "/readyz")
        await read_stream(HOST, port, "/stream?count=100")  # warm-up
        yield proc
    finally:
        cluster.stop([proc])


async def stream(ctx: Context) -> dict[str, Any]:
    """One reader: events/s of a firehose, and latency of a paced stream."""
    sizes = ctx.sizes
    async with baseline_server(ctx) as proc:
        check = OrderCheck(sizes.stream_count)
        stats = await read_stream(HOST, proc.port, f"/stream?count={sizes.stream_count}", check)
        paced = OrderCheck(sizes.paced_count)
        await read_stream(HOST, proc.port, f"/paced?count={sizes.paced_count}&rate_hz={sizes.rate_hz:g}", paced)
    if stats.terminal != "done":
        raise RuntimeError(f"the in-process stream ended without its done event: {stats.error}")
    return {
        "events": stats.events,
        "events_per_s": stats.events / ((stats.last_event_ns - stats.opened_ns) / 1e9),
        "request_to_first_event_ms": (stats.first_event_ns - stats.opened_ns) / 1e6,
        "missing": check.missing,
        "paced_p50_ms": percentile(paced.latencies_ms(), 50),
        "paced_p99_ms": percentile(paced.latencies_ms(), 99),
    }


async def fanout(ctx: Context) -> dict[str, Any]:
    """Many readers, each streaming its own generator of the same size: aggregate events/s."""
    sizes = ctx.sizes
    async with baseline_server(ctx) as proc:
        path = f"/stream?count={sizes.fanout_events}"
        results = await asyncio.gather(*(read_stream(HOST, proc.port, path) for _ in range(sizes.fanout_readers)))
    events = sum(r.events for r in results)
    span_s = (max(r.last_event_ns for r in results) - min(r.first_event_ns for r in results)) / 1e9
    return {"events": events, "events_per_s": events / span_s if span_s > 0 else float("nan")}


async def idle_streams(ctx: Context) -> dict[int, dict[str, float]]:
    """RSS per idle stream and new-stream start time, at each configured count."""
    sizes = ctx.sizes
    out: dict[int, dict[str, float]] = {}
    async with baseline_server(ctx) as proc:
        idle.close_all(await idle.open_idle(HOST, proc.port, ["/idle"] * 50))  # warm-up
        before = await idle.settle_rss_kb(proc.pid)
        held: list[Any] = []
        for count in sizes.idle_streams:
            held += await idle.open_idle(HOST, proc.port, ["/idle"] * (count - len(held)))
            after = await idle.settle_rss_kb(proc.pid)
            starts = await idle.probe_starts_ms(HOST, proc.port, "/idle", sizes.start_probes)
            out[count] = idle.summarize(before, after, count, starts)
        idle.close_all(held)
    return out
