"""Scenario 3, time to first event: ``POST /invoke`` of a trivial call → its first event parsed
by the client, one job after another (and the seed's one-request form → its result); beside it
plain RQ enqueue→start (RQ's forking worker) and Celery enqueue→start (prefork, Redis broker),
measured in the same run.
Also trivial jobs/s per worker: jobs queued while no worker runs, then one worker drains them.
"""

import asyncio
import time

import orjson

from bench import queues
from bench.calls import PREFAB, events_path, final_records, host_port, invoke, submit_many
from bench.context import Context
from bench.results import Figure, ScenarioResult, Target, percentile
from bench.sse_client import read_stream
from bench.stack import FactoryStack, factory_stack

NAME = "first-event"


async def _sequential_ms(ctx: Context, stack: FactoryStack) -> tuple[list[float], list[str]]:
    host, port = host_port(stack.gateway.url)
    times: list[float] = []
    job_ids: list[str] = []
    for _ in range(ctx.sizes.ttfe_jobs):
        began_ns = time.time_ns()
        job_id = await invoke(ctx.caller, stack.gateway.url, "trivial", {})
        stats = await read_stream(host, port, events_path(job_id), timeout_s=60)
        if not stats.events:
            raise RuntimeError(f"job {job_id} streamed no event: {stats.error}")
        times.append((stats.first_event_ns - began_ns) / 1e6)
        job_ids.append(job_id)
    return times, job_ids


async def _seed_form_ms(ctx: Context, stack: FactoryStack) -> list[float]:
    """The seed's one-request form: ``POST /invoke/{prefab}/trivial`` answers with the result."""
    times: list[float] = []
    for _ in range(ctx.sizes.ttfe_jobs):
        began_ns = time.time_ns()
        status, answer = await ctx.caller.post_json(f"{stack.gateway.url}/invoke/{PREFAB}/trivial", {"inputs": {}})
        if status != 200 or orjson.loads(answer).get("status") != "SUCCESS":
            raise RuntimeError(f"the seed form answered {status}: {answer[:300]!r}")
        times.append((time.time_ns() - began_ns) / 1e6)
    return times


async def _drain_rate(ctx: Context, stack: FactoryStack) -> float:
    """Trivial jobs per second of one worker, from its first job's start to its last job's end."""
    ctx.cluster.stop(stack.workers)
    job_ids = await submit_many(ctx.caller, [stack.gateway.url], "trivial", {}, ctx.sizes.throughput_jobs)
    workers = await asyncio.to_thread(ctx.cluster.start_workers, stack.url, 1)
    try:
        records = await final_records(stack.redis, job_ids, timeout_s=300)
    finally:
        ctx.cluster.stop(workers)
    started = min(r.started_ms or 0 for r in records)
    ended = max(r.ended_ms or 0 for r in records)
    return (len(records) - 1) / ((ended - started) / 1000) if ended > started else float("nan")


async def run(ctx: Context) -> ScenarioResult:
    rq = await ctx.baseline("rq", queues.rq_plain)
    celery = await ctx.baseline("celery", queues.celery)
    # Calls may wait in the queue while no worker runs: the drain below queues them first.
    async with factory_stack(ctx, FACTORY_QUEUE_WITHOUT_WORKER="1") as stack:
        ttfe, job_ids = await _sequential_ms(ctx, stack)
        seed_form = await _seed_form_ms(ctx, stack)
        records = await final_records(stack.redis, job_ids, timeout_s=60)
        rate = await _drain_rate(ctx, stack)
    internal = [float((r.started_ms or 0) - r.created_ms) for r in records]
    p50, p99 = percentile(ttfe, 50), percentile(ttfe, 99)
    figures = [
        Figure(
            NAME,
            "POST /invoke → first event p50",
            p50,
            "ms",
            "celery enqueue→start p50",
            celery["start_p50_ms"],
            Target("ratio", "<=", 1.0),
        ),
        Figure(NAME, "POST /invoke → first event p99", p99, "ms", "celery enqueue→start p99", celery["start_p99_ms"]),
        Figure(
            NAME,
            "seed form POST /invoke/{fn} → result p50",
            percentile(seed_form, 50),
            "ms",
            "celery enqueue→start p50",
            celery["start_p50_ms"],
        ),
        Figure(NAME, "POST /invoke → first event p50 vs rq", p50, "ms", "rq enqueue→start p50", rq["start_p50_ms"]),
        Figure(
            NAME,
            "factory enqueue→start p50 (job record)",
            percentile(internal, 50),
            "ms",
            "rq enqueue→start p50",
            rq["start_p50_ms"],
        ),
        Figure(
            NAME,
            "trivial jobs/s per worker",
            rate,
            "jobs/s",
            "celery prefork ×1",
            celery["jobs_per_s_per_worker"],
            Target("ratio", ">=", 1.0),
        ),
        Figure(NAME, "trivial jobs/s per worker vs rq", rate, "jobs/s", "rq worker ×1", rq["jobs_per_s_per_worker"]),
    ]
    details = {
        "jobs": len(ttfe),
        "ttfe_p50_ms": p50,
        "ttfe_p99_ms": p99,
        "ttfe_max_ms": max(ttfe, default=float("nan")),
        "seed_form_p50_ms": percentile(seed_form, 50),
        "seed_form_p99_ms": percentile(seed_form, 99),
        "enqueue_to_start_p50_ms": percentile(internal, 50),
        "enqueue_to_start_p99_ms": percentile(internal, 99),
        "jobs_per_s_per_worker": rate,
        "rq": rq,
        "celery": celery,
    }
    return ScenarioResult(NAME, figures, details)
