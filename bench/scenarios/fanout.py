"""Scenario 4, fan-out: one job, many concurrent readers on one gateway. Every reader must get
every event; the figure is the aggregate events/s delivered, against the same number of
readers each streaming its own in-process generator from sse-starlette.
"""

import asyncio

from bench import inprocess
from bench.calls import OrderCheck, events_path, host_port, invoke
from bench.context import Context
from bench.results import Figure, ScenarioResult, Target
from bench.sse_client import open_stream
from bench.stack import factory_stack

NAME = "fan-out"
START_DELAY_S = 1.5  # the job waits this long before its first event, so every reader is attached
TIMEOUT_S = 300.0


async def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    base = await ctx.baseline("sse_fanout", inprocess.fanout)
    async with factory_stack(ctx) as stack:
        await stack.mark_cpu()
        inputs = {"count": sizes.fanout_events, "start_delay_s": START_DELAY_S}
        job_id = await invoke(ctx.caller, stack.gateway.url, "firehose", inputs)
        host, port = host_port(stack.gateway.url)
        checks = [OrderCheck(sizes.fanout_events) for _ in range(sizes.fanout_readers)]
        readers = await asyncio.gather(*(open_stream(host, port, events_path(job_id), c) for c in checks))
        await asyncio.wait_for(asyncio.gather(*(r.started for r in readers)), 30)
        await asyncio.wait_for(asyncio.gather(*(r.done for r in readers)), TIMEOUT_S)
        cpu_s = await stack.cpu_used_s()
    stats = [r.stats for r in readers]
    events = sum(s.events for s in stats)
    span_s = (max(s.last_event_ns for s in stats) - min(s.first_event_ns for s in stats)) / 1e9
    rate = events / span_s if span_s > 0 else float("nan")
    complete = sum(1 for s, c in zip(stats, checks, strict=True) if s.terminal == "done" and c.missing == 0)
    figures = [
        Figure(
            NAME,
            f"{sizes.fanout_readers} readers × {sizes.fanout_events} events, aggregate",
            rate,
            "ev/s",
            "sse in-process, same readers",
            base["events_per_s"],
            Target("value", ">=", 50_000),
        ),
    ]
    details = {
        "readers": sizes.fanout_readers,
        "complete_readers": complete,
        "events_delivered": events,
        "events_per_s": rate,
        "lost": sum(c.missing for c in checks),
        "repeated": sum(c.repeated + s.repeats for c, s in zip(checks, stats, strict=True)),
        "out_of_order": sum(c.out_of_order for c in checks),
        "cpu_s": cpu_s,
        "attached_before_first_event": max(s.started_ns for s in stats) < min(s.first_event_ns for s in stats),
    }
    return ScenarioResult(NAME, figures, details)
