"""Scenario 5, many jobs: N jobs of M events each submitted at once over 2 gateways to 2
workers, every job's stream read (from the other gateway than the one that took the call).
Figures: jobs/s and events/s from the first submit to the last terminal event; no event lost,
none repeated, all in order. Baseline: plain RQ, 2 workers, as many no-op jobs.

Also the load item of the faults issue: ``python -m bench --only many-jobs``.
"""

import asyncio
import time

from bench import queues
from bench.calls import OrderCheck, events_path, host_port, invoke
from bench.context import Context
from bench.results import Figure, ScenarioResult, Target
from bench.sse_client import StreamStats, read_stream
from bench.stack import factory_stack

NAME = "many-jobs"
SUBMIT_CONCURRENCY = 64
TIMEOUT_S = 300.0


async def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    base = await ctx.baseline("rq_many", queues.rq_many)
    gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    async with factory_stack(ctx, gateways=2, workers=2) as stack:
        urls = [g.url for g in stack.gateways]

        async def one(n: int, check: OrderCheck) -> StreamStats:
            async with gate:
                job_id = await invoke(ctx.caller, urls[n % 2], "firehose", {"count": sizes.events_per_job})
            host, port = host_port(urls[(n + 1) % 2])
            return await read_stream(host, port, events_path(job_id), check, timeout_s=TIMEOUT_S)

        checks = [OrderCheck(sizes.events_per_job) for _ in range(sizes.many_jobs)]
        await stack.mark_cpu()
        began_ns = time.time_ns()
        stats = await asyncio.gather(*(one(n, c) for n, c in enumerate(checks)))
        submitted_s = (time.time_ns() - began_ns) / 1e9
        cpu_s = await stack.cpu_used_s()
    span_s = (max(s.last_event_ns for s in stats) - began_ns) / 1e9
    events = sum(s.events for s in stats)
    jobs_per_s = len(stats) / span_s
    lost = sum(c.missing for c in checks)
    repeated = sum(c.repeated + s.repeats for c, s in zip(checks, stats, strict=True))
    out_of_order = sum(c.out_of_order for c in checks)
    details = {
        "jobs": len(stats),
        "events_per_job": sizes.events_per_job,
        "events_received": events,
        "elapsed_s": span_s,
        "all_read_s": submitted_s,
        "jobs_per_s": jobs_per_s,
        "events_per_s": events / span_s,
        "lost": lost,
        "repeated": repeated,
        "out_of_order": out_of_order,
        "seq_gaps": sum(s.gaps for s in stats),
        "not_done": sum(1 for s in stats if s.terminal != "done"),
        "errors": sorted({s.error for s in stats if s.error})[:5],
        "cpu_s": cpu_s,
    }
    figures = [
        Figure(
            NAME,
            f"{sizes.many_jobs} jobs × {sizes.events_per_job} events, 2 workers",
            jobs_per_s,
            "jobs/s",
            "plain rq, 2 workers, no-op jobs",
            base["jobs_per_s"],
        ),
        Figure(NAME, "events/s delivered (all jobs)", events / span_s, "ev/s"),
        Figure(
            NAME,
            "events lost + repeated + out of order",
            float(lost + repeated + out_of_order),
            "events",
            target=Target("value", "<=", 0),
        ),
    ]
    return ScenarioResult(NAME, figures, details)
