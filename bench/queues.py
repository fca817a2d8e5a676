"""Queue baselines: plain RQ and Celery running a task that only records when it ran.

Each task pushes ``"<sent_ns> <start_ns> <end_ns>"`` onto a list; the bench blocks on that
list, so one enqueue→start time is measured per job, in sequence, with the same clock on
both sides. Throughput per worker is measured the way the factory's is: jobs are queued while
no worker runs, then one worker drains them, timed from the first start to the last end.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis

from bench import keys, rq_baseline
from bench.context import Context
from bench.procs import READY_TIMEOUT_S, Proc, rq_worker_listed, wait_log
from bench.results import percentile

WARMUP_JOBS = 5
WAIT_S = 60.0

Marks = list[tuple[int, int, int]]


def _parse(lines: list[bytes]) -> Marks:
    marks: Marks = []
    for line in lines:
        sent, start, end = (int(part) for part in line.split())
        marks.append((sent, start, end))
    return marks


def sequential_starts_ms(client: redis.Redis, enqueue: Callable[[str], None], jobs: int, system: str) -> list[float]:
    """Enqueue one job, wait until it ran, repeat: enqueue→start of each, in ms."""
    key = keys.marks_key(f"{system}:sequential")
    out: list[float] = []
    for _ in range(jobs):
        enqueue(key)
        reply = client.blpop([key], timeout=WAIT_S)
        if reply is None:
            raise TimeoutError(f"{system}: a job did not start within {WAIT_S:g} s")
        line = reply[1]
        ((sent, start, _),) = _parse([line if isinstance(line, bytes) else line.encode()])
        out.append((start - sent) / 1e6)
    return out


def wait_marks(client: redis.Redis, key: str, count: int) -> Marks:
    deadline = time.monotonic() + WAIT_S * 4
    while client.llen(key) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.llen(key)} of {count} jobs ran")
        time.sleep(0.02)
    return _parse(client.lrange(key, 0, -1))  # type: ignore[arg-type]


def drain_rate(marks: Marks) -> float:
    """Jobs per second from the first start to the last end."""
    span_s = (max(m[2] for m in marks) - min(m[1] for m in marks)) / 1e9
    return (len(marks) - 1) / span_s if span_s > 0 else float("nan")


def submit_rate(marks: Marks) -> float:
    """Jobs per second from the first enqueue to the last end."""
    span_s = (max(m[2] for m in marks) - min(m[0] for m in marks)) / 1e9
    return len(marks) / span_s if span_s > 0 else float("nan")


async def _measure(
    ctx: Context, system: str, start_worker: Callable[[str, int], Proc], enqueue: Callable[[str], None], url: str
) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    cluster = ctx.cluster
    worker = await asyncio.to_thread(start_worker, url, 1)
    try:
        await asyncio.to_thread(sequential_starts_ms, client, enqueue, WARMUP_JOBS, system)
        starts = await asyncio.to_thread(sequential_starts_ms, client, enqueue, ctx.sizes.ttfe_jobs, system)
    finally:
        cluster.stop([worker])
    key = keys.marks_key(f"{system}:drain")
    for _ in range(ctx.sizes.throughput_jobs):
        enqueue(key)
    worker = await asyncio.to_thread(start_worker, url, 1)
    try:
        marks = await asyncio.to_thread(wait_marks, client, key, ctx.sizes.throughput_jobs)
    finally:
        cluster.stop([worker])
        client.close()
    return {
        "start_p50_ms": percentile(starts, 50),
        "start_p99_ms": percentile(starts, 99),
        "jobs_per_s_per_worker": drain_rate(marks),
    }


def _rq_worker(ctx: Context) -> Callable[[str, int], Proc]:
    def start(url: str, concurrency: int) -> Proc:
        proc = ctx.cluster.start_module("rq-worker", "bench.rq_baseline", [url], url)
        client = redis.Redis.from_url(url)
        try:
            proc.wait_ready(rq_worker_listed(client, proc.pid), READY_TIMEOUT_S)
        finally:
            client.close()
        return proc

    return start


def _celery_worker(ctx: Context) -> Callable[[str, int], Proc]:
    def start(url: str, concurrency: int) -> Proc:
        proc = ctx.cluster.start_module("celery-worker", "bench.celery_baseline", [url, str(concurrency)], url)
        wait_log(proc, " ready.")
        return proc

    return start


async def rq_plain(ctx: Context) -> dict[str, Any]:
    url = ctx.cluster.new_db()
    client = redis.Redis.from_url(url)
    return await _measure(ctx, "rq", _rq_worker(ctx), lambda key: rq_baseline.enqueue(client, key), url)


async def celery(ctx: Context) -> dict[str, Any]:
    # Imported here: Celery is the bench extra's, and scenarios that do not compare to it run without it.
    try:
        from bench import celery_baseline  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError("Celery is not installed: pip install -e '.[bench]'") from exc
    url = ctx.cluster.new_db()
    app = celery_baseline.make_app(url)
    try:
        return await _measure(ctx, "celery", _celery_worker(ctx), lambda key: celery_baseline.enqueue(app, key), url)
    finally:
        app.close()


async def rq_many(ctx: Context) -> dict[str, Any]:
    """Plain RQ, 2 workers, the many-jobs count of no-op jobs enqueued at once: jobs/s."""
    url = ctx.cluster.new_db()
    client = redis.Redis.from_url(url)
    start = _rq_worker(ctx)
    workers = [await asyncio.to_thread(start, url, 1) for _ in range(2)]
    key = keys.marks_key("rq:many")
    try:
        for _ in range(ctx.sizes.many_jobs):
            rq_baseline.enqueue(client, key)
        marks = await asyncio.to_thread(wait_marks, client, key, ctx.sizes.many_jobs)
    finally:
        ctx.cluster.stop(workers)
        client.close()
    return {"jobs": len(marks), "jobs_per_s": submit_rate(marks)}
