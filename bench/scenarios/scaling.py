"""Scenario 7, scaling: the same batch of sleep-bound jobs on 1, 2, 4, 8 worker processes;
jobs/s from the first submit to the last job's end, relative to 1 worker.
"""

import time

from bench.calls import final_records, submit_many
from bench.context import Context
from bench.results import Figure, ScenarioResult, Target
from bench.stack import factory_stack

NAME = "scaling"
TIMEOUT_S = 300.0


async def _rate(ctx: Context, workers: int) -> float:
    sizes = ctx.sizes
    async with factory_stack(ctx, workers=workers) as stack:
        began_ms = time.time() * 1000
        inputs = {"seconds": sizes.sleep_s}
        job_ids = await submit_many(ctx.caller, [stack.gateway.url], "sleepy", inputs, sizes.scaling_jobs)
        records = await final_records(stack.redis, job_ids, TIMEOUT_S)
    if any(r.status != "finished" for r in records):
        raise RuntimeError("a sleep job did not finish")
    return len(records) / ((max(r.ended_ms or 0 for r in records) - began_ms) / 1000)


async def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    rates = {n: await _rate(ctx, n) for n in sizes.scaling_workers}
    one = rates[sizes.scaling_workers[0]]
    figures = [
        Figure(
            NAME,
            f"{n} worker{'s' if n > 1 else ''}, {sizes.scaling_jobs} × sleep {sizes.sleep_s:g} s",
            rate,
            "jobs/s",
            "1 worker" if n > 1 else None,
            one if n > 1 else None,
            Target("ratio", ">=", 7.0) if n == 8 else None,
        )
        for n, rate in rates.items()
    ]
    details = {
        "jobs": sizes.scaling_jobs,
        "sleep_s": sizes.sleep_s,
        "jobs_per_s": rates,
        "efficiency": {n: rate / (n / sizes.sleep_s) for n, rate in rates.items()},
    }
    return ScenarioResult(NAME, figures, details)
