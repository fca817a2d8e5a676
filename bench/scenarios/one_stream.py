"""Scenario 2, one stream: a job yielding small events as fast as it can, read by one SSE
client that parses every event (events/s, against the in-process sse-starlette stream); and
a job yielding at a fixed rate, each event stamped at its ``yield``: latency to the client's
parse, p50/p99 (against raw Redis pub/sub and the in-process stream at the same rate).
"""

import time
from typing import Any

from bench import inprocess, pubsub
from bench.calls import OrderCheck, events_path, host_port, invoke
from bench.context import Context
from bench.results import Figure, ScenarioResult, Target, percentile
from bench.sse_client import StreamStats, read_stream
from bench.stack import factory_stack

NAME = "one-stream"


async def _read(ctx: Context, url: str, function_name: str, inputs: dict[str, Any], check: OrderCheck) -> StreamStats:
    """Invoke and read the job's stream; ``opened_ns`` of the result is when the POST began."""
    began_ns = time.time_ns()
    job_id = await invoke(ctx.caller, url, function_name, inputs)
    host, port = host_port(url)
    stats = await read_stream(host, port, events_path(job_id), check, timeout_s=300)
    stats.opened_ns = began_ns
    return stats


async def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    sse = await ctx.baseline("sse_stream", inprocess.stream)
    raw = await ctx.baseline("pubsub", pubsub.measure)
    async with factory_stack(ctx) as stack:
        fire = OrderCheck(sizes.stream_count)
        await stack.mark_cpu()
        stats = await _read(ctx, stack.gateway.url, "firehose", {"count": sizes.stream_count}, fire)
        cpu_s = await stack.cpu_used_s()
        paced = OrderCheck(sizes.paced_count)
        inputs = {"count": sizes.paced_count, "rate_hz": sizes.rate_hz}
        paced_stats = await _read(ctx, stack.gateway.url, "paced", inputs, paced)
    rate = stats.events / ((stats.last_event_ns - stats.opened_ns) / 1e9)
    latencies = paced.latencies_ms(since_ns=paced_stats.started_ns)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    at = f"@{sizes.rate_hz:g}/s"
    figures = [
        Figure(
            NAME,
            f"{sizes.stream_count} events, one reader",
            rate,
            "ev/s",
            "sse in-process",
            sse["events_per_s"],
            Target("ratio", ">=", 2.0),
        ),
        Figure(
            NAME,
            f"yield→parse p50 {at}",
            p50,
            "ms",
            "redis pub→sub p50",
            raw["paced_p50_ms"],
            Target("value", "<=", 1.0),
        ),
        Figure(
            NAME,
            f"yield→parse p99 {at}",
            p99,
            "ms",
            "redis pub→sub p99",
            raw["paced_p99_ms"],
            Target("value", "<=", 5.0),
        ),
        Figure(NAME, f"yield→parse p50 {at} vs sse", p50, "ms", "sse in-process p50", sse["paced_p50_ms"]),
        Figure(NAME, f"yield→parse p99 {at} vs sse", p99, "ms", "sse in-process p99", sse["paced_p99_ms"]),
    ]
    details = {
        "events": stats.events,
        "events_per_s": rate,
        "request_to_first_event_ms": (stats.first_event_ns - stats.opened_ns) / 1e6,
        "first_to_last_event_ms": (stats.last_event_ns - stats.first_event_ns) / 1e6,
        "firehose_cpu_s": cpu_s,
        "lost": fire.missing + paced.missing,
        "repeated": fire.repeated + paced.repeated + stats.repeats + paced_stats.repeats,
        "out_of_order": fire.out_of_order + paced.out_of_order,
        "terminal": [stats.terminal, paced_stats.terminal],
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "latency_max_ms": max(latencies, default=float("nan")),
        "latency_events": len(latencies),
        "latency_events_replayed": len(paced.stamps) - len(latencies),
        "latency_p99_with_replayed_ms": percentile(paced.latencies_ms(), 99),
    }
    return ScenarioResult(NAME, figures, details)
