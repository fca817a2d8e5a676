"""The factory-wide figures read from Redis: job outcomes and timings, queues, running jobs, workers.

Every gateway reads the same keys, so ``GET /stats`` and the factory-wide half of ``GET /metrics``
are the same whichever gateway answers and survive any process restart. What one gateway process
counts itself (its streams, refusals, Redis errors) lives in :mod:`gateway.metrics`.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from factory import jobstats
from factory.jobs import now_ms
from factory.jobstats import Histogram, OutcomeCount
from factory.presence import parse_presence
from factory.settings import Settings
from factory.store import keys


class OutcomeStat(BaseModel):
    prefab_id: str
    function: str
    version: str
    outcome: str = Field(description="finished | failed | canceled | retried")
    error_code: str = Field(description="the terminal error's code; empty when finished")
    count: int


class TimingStat(BaseModel):
    """One function's histogram, summarised: how many, their total and mean (seconds)."""

    prefab_id: str
    function: str
    version: str
    outcome: str = Field(default="", description="durations only")
    count: int
    sum_s: float
    mean_s: float | None


class QueueStat(BaseModel):
    name: str
    depth: int = Field(description="jobs waiting")
    oldest_waiting_s: float | None = Field(description="how long the oldest waiting job has waited")


class WorkerStat(BaseModel):
    name: str
    host: str
    pid: int
    serves_all: bool = True
    queues: list[str]
    prefabs: list[str]
    secrets: list[str] = Field(default_factory=list, description="declared secrets it can supply (names only)")
    started_at: datetime
    last_beat_at: datetime
    cpu_s: float
    rss_bytes: int


class Stats(BaseModel):
    """``GET /stats``: what the factory has done and is doing, across every process."""

    generated_at: datetime
    jobs_by_outcome: dict[str, int] = Field(description="ended jobs (and retries) by outcome, since the stats began")
    outcomes: list[OutcomeStat]
    durations: list[TimingStat] = Field(description="from a job's start (its creation if it never ran) to its end")
    first_event: list[TimingStat] = Field(description="from a job's creation to its first event")
    running_jobs: int
    queues: list[QueueStat]
    workers: list[WorkerStat]
    streams_open: int = Field(description="SSE streams the answering gateway process serves")


@dataclass(frozen=True)
class Snapshot:
    """The raw figures, parsed: what /stats summarises and /metrics exports."""

    outcomes: list[OutcomeCount]
    durations: list[Histogram]
    first_event: list[Histogram]
    running_jobs: int
    queues: list[QueueStat]
    workers: list[WorkerStat]


def _iso(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _worker(raw: bytes | None) -> WorkerStat | None:
    presence = parse_presence(raw)
    if presence is None:
        return None
    data = presence.model_dump()
    return WorkerStat(started_at=_iso(presence.started_ms), last_beat_at=_iso(presence.beat_ms), **data)


async def _queues(client: aioredis.Redis, settings: Settings, now: int) -> list[QueueStat]:
    """Every RQ queue known to Redis (and the deployments' one): depth and the age of its oldest job."""
    known: set[bytes | str] = await client.smembers(keys.rq_queues_key())
    prefix = keys.RQ_QUEUE_PREFIX
    decoded = {key.decode() if isinstance(key, bytes) else key for key in known}
    names = sorted({key.removeprefix(prefix) for key in decoded} | {keys.deploy_queue_name(settings.queue_name)})
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(prefix + name)
            pipe.lindex(prefix + name, 0)
        replies = await pipe.execute()
    heads = [(name, int(replies[2 * i]), replies[2 * i + 1]) for i, name in enumerate(names)]
    waiting = [head.decode() for _, depth, head in heads if depth and head]
    async with client.pipeline(transaction=False) as pipe:
        for job_id in waiting:
            pipe.hget(keys.job_key(job_id), "created_ms")
        created = dict(zip(waiting, await pipe.execute(), strict=True))
    found = []
    for name, depth, head in heads:
        created_raw = created.get(head.decode()) if depth and head else None
        waited = max(0.0, (now - int(created_raw)) / 1000) if created_raw else None
        found.append(QueueStat(name=name, depth=depth, oldest_waiting_s=waited))
    return found


async def read_snapshot(client: aioredis.Redis, settings: Settings) -> Snapshot:
    """Read every factory-wide figure (three round trips)."""
    now = now_ms()
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.stats_outcomes_key())
        pipe.hgetall(keys.stats_durations_key())
        pipe.hgetall(keys.stats_first_event_key())
        pipe.zcount(keys.running_jobs_key(), now, "+inf")
        pipe.zrangebyscore(keys.workers_key(), now, "+inf")
        outcomes, durations, first_event, running, worker_names = await pipe.execute()
    async with client.pipeline(transaction=False) as pipe:
        for name in worker_names:
            pipe.hget(keys.worker_key(name.decode()), "presence")
        presences = await pipe.execute()
    workers = [w for w in (_worker(raw) for raw in presences) if w is not None]
    return Snapshot(
        outcomes=jobstats.outcomes(outcomes),
        durations=jobstats.histograms(durations),
        first_event=jobstats.histograms(first_event),
        running_jobs=int(running),
        queues=await _queues(client, settings, now),
        workers=sorted(workers, key=lambda w: w.name),
    )


def _timing(histogram: Histogram) -> TimingStat:
    labels = histogram.labels
    count = histogram.count
    return TimingStat(
        prefab_id=labels.prefab_id,
        function=labels.function,
        version=labels.version,
        outcome=histogram.outcome,
        count=count,
        sum_s=round(histogram.sum_s, 6),
        mean_s=round(histogram.sum_s / count, 6) if count else None,
    )


def summarise(snapshot: Snapshot, streams_open: int) -> Stats:
    """The /stats view of a snapshot."""
    by_outcome: dict[str, int] = {}
    for count in snapshot.outcomes:
        by_outcome[count.outcome] = by_outcome.get(count.outcome, 0) + count.count
    return Stats(
        generated_at=datetime.now(UTC),
        jobs_by_outcome=by_outcome,
        outcomes=[
            OutcomeStat(
                prefab_id=c.labels.prefab_id,
                function=c.labels.function,
                version=c.labels.version,
                outcome=c.outcome,
                error_code=c.error_code,
                count=c.count,
            )
            for c in snapshot.outcomes
        ],
        durations=[_timing(h) for h in snapshot.durations],
        first_event=[_timing(h) for h in snapshot.first_event],
        running_jobs=snapshot.running_jobs,
        queues=snapshot.queues,
        workers=snapshot.workers,
        streams_open=streams_open,
    )
