"""Scenario 6, connections: many idle SSE streams on one gateway process. Figures: the
gateway's RSS growth per stream, and how long a new stream takes to start (connect → first
body bytes) while they are open; against the same on the in-process sse-starlette server.

The streams follow queued jobs that never run (no worker serves this gateway's queue),
100 readers per job, so both per-stream and per-channel costs are in the figure.
"""

from bench import idle, inprocess
from bench.calls import events_path, host_port, submit_many
from bench.context import Context
from bench.results import Figure, ScenarioResult, Target
from bench.sse_client import SSEProtocol
from bench.stack import factory_stack

NAME = "connections"
READERS_PER_JOB = 100


async def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    base: dict[int, dict[str, float]] = await ctx.baseline("sse_idle", inprocess.idle_streams)
    out: dict[int, dict[str, float]] = {}
    figures: list[Figure] = []
    most = max(sizes.idle_streams)
    async with factory_stack(ctx, workers=0, FACTORY_QUEUE_WITHOUT_WORKER="1") as stack:
        host, port = host_port(stack.gateway.url)
        jobs = -(-most // READERS_PER_JOB)
        job_ids = await submit_many(ctx.caller, [stack.gateway.url], "sleepy", {"seconds": 1}, jobs)
        paths = [events_path(job_ids[n % jobs]) for n in range(most)]
        # Warm-up: one stream alone first (a fresh gateway's first readers at once can race), then a few.
        idle.close_all(await idle.open_idle(host, port, paths[:1]))
        idle.close_all(await idle.open_idle(host, port, paths[:50]))
        before = await idle.settle_rss_kb(stack.gateway.pid)
        held: list[SSEProtocol] = []
        for count in sizes.idle_streams:
            held += await idle.open_idle(host, port, paths[len(held) : count])
            after = await idle.settle_rss_kb(stack.gateway.pid)
            starts = await idle.probe_starts_ms(host, port, paths[0], sizes.start_probes)
            out[count] = idle.summarize(before, after, count, starts)
            out[count]["streams_alive"] = sum(1 for p in held if not p.done.done())
        idle.close_all(held)
    for count, figs in out.items():
        rss_target = Target("value", "<=", 100.0) if count >= 10_000 else None
        figures += [
            Figure(
                NAME,
                f"gateway RSS per idle stream @{count}",
                figs["rss_per_stream_kb"],
                "KB",
                "sse in-process",
                base[count]["rss_per_stream_kb"],
                rss_target,
            ),
            Figure(
                NAME,
                f"new stream start, max of {sizes.start_probes} @{count}",
                figs["new_stream_max_ms"],
                "ms",
                "sse in-process",
                base[count]["new_stream_max_ms"],
                Target("value", "<=", 100.0),
            ),
        ]
    return ScenarioResult(NAME, figures, {"gateway": out, "sse_inprocess": base})
