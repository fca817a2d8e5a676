"""JobService: the gateway's one place that creates, reads and cancels jobs.

Enqueueing goes through RQ (sync) in a worker thread, in the same MULTI/EXEC as the job
record, so a job id a caller receives always has both. The gateway names the task by dotted
path and never imports worker code.
"""

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from factory.deployed import Target
from factory.enqueue import enqueue_async
from factory.errors import JobNotFound
from factory.events import CANCELED
from factory.jobs import InvocationRequest, JobRecord, JobStatus, new_job_id, now_ms
from factory.settings import Settings
from factory.store import keys, rqview
from factory.store.eventlog import Outcome, append_keys, parse_append, terminal_error_args
from factory.store.scripts import APPEND_LUA
from factory.store.wire import AsyncWire
from factory.validation import validate_file_groups, validate_inputs
from gateway.catalog import CatalogView

logger = logging.getLogger(__name__)


# How many of the most recent jobs a filtered listing looks through.
RECENT_SCAN = 2000


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing keeps: each field given must match."""

    status: JobStatus | None = None
    prefab_id: str | None = None
    function_name: str | None = None

    def accepts(self, record: JobRecord) -> bool:
        return (
            (self.status is None or record.status is self.status)
            and (self.prefab_id is None or record.prefab_id == self.prefab_id)
            and (self.function_name is None or record.function_name == self.function_name)
        )


@dataclass(frozen=True)
class Submitted:
    record: JobRecord
    streaming: bool


class JobService:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        sync_client: redis.Redis,
        wire: AsyncWire,
        enqueues: AsyncWire,
        catalog: CatalogView,
    ):
        self.settings = settings
        self.client = client
        self.wire = wire  # the stream's first read, on the relay's lean connection (``factory.store.wire``)
        # The enqueue's own: a slow log read (whose timeout drops its connection) never fails a call.
        self.enqueues = enqueues
        self.sync_client = sync_client
        self.catalog = catalog
        self._append = client.register_script(APPEND_LUA)

    async def prepare(
        self,
        prefab_id: str | None,
        function_name: str,
        inputs: dict[str, Any],
        files: dict[str, list[str]],
        *,
        version: str | None = None,
        retries: int | None = None,
    ) -> tuple[Target, InvocationRequest]:
        """Route and validate a call; nothing is written yet. ``retries`` overrides the manifest's."""
        target = await self.catalog.resolve(prefab_id, function_name, version)
        resolved = validate_inputs(target.function, inputs)
        validate_file_groups(target.function, files)
        await self.catalog.check_served(target.deployment.prefab_id)
        request = InvocationRequest(
            job_id=new_job_id(),
            prefab_id=target.deployment.prefab_id,
            function_name=target.function.name,
            version=target.deployment.version,
            deployment_id=target.deployment.deployment_id,
            inputs=resolved,
            files=files,
            timeout_s=target.function.timeout or self.settings.default_timeout_s,
            retries=target.function.retries if retries is None else retries,
            created_ms=now_ms(),
        )
        return target, request

    async def submit(self, target: Target, request: InvocationRequest) -> JobRecord:
        record = JobRecord(
            job_id=request.job_id,
            prefab_id=request.prefab_id,
            function_name=request.function_name,
            version=request.version,
            status=JobStatus.QUEUED,
            created_ms=request.created_ms,
            streaming=target.function.streaming,
        )
        await enqueue_async(self.enqueues, self.sync_client, self.settings, record, request)
        queued = {
            "job_id": record.job_id,
            "event": "queued",
            "prefab_id": record.prefab_id,
            "version": record.version,
            "function": record.function_name,
            "queue": keys.prefab_queue_name(self.settings.queue_name, record.prefab_id),
        }
        # Written on the loop's next turn: by then a plain answer (202) has been written to the caller.
        asyncio.get_running_loop().call_soon(functools.partial(logger.info, "job queued", extra=queued))
        return record

    async def get(self, job_id: str) -> tuple[JobRecord, int]:
        """The job's record and its last event id; :class:`JobNotFound` when unknown or expired."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.job_key(job_id))
            pipe.llen(keys.events_key(job_id))
            fields, length = await pipe.execute()
        if not fields:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its retention ended)")
        return JobRecord.from_hash(fields), int(length)

    async def stream_head(self, job_id: str, after_seq: int, count: int) -> tuple[JobStatus, int, list[bytes]]:
        """What a stream starts from, in one round trip: the job's status, its last event id and up to
        ``count`` events after ``after_seq``; :class:`JobNotFound` when unknown or expired."""
        log = keys.events_key(job_id)
        status, length, events = await self.wire.pipeline(
            ("HGET", keys.job_key(job_id), "status"), ("LLEN", log), ("LRANGE", log, after_seq, after_seq + count - 1)
        )
        if status is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its retention ended)")
        return JobStatus(orjson.loads(status)), int(length), events

    async def recent(self, limit: int, match: JobFilter | None = None) -> list[tuple[JobRecord, int]]:
        """The newest jobs first, at most ``limit``, those ``match`` accepts (it looks at most RECENT_SCAN deep)."""
        found: list[tuple[JobRecord, int]] = []
        page = limit if match is None else max(limit, 100)
        for start in range(0, RECENT_SCAN, page):
            ids: list[bytes] = await self.client.zrevrange(keys.recent_jobs_key(), start, start + page - 1)  # type: ignore[assignment]
            for raw in ids:
                try:
                    record, length = await self.get(raw.decode())
                except JobNotFound:
                    await self.client.zrem(keys.recent_jobs_key(), raw)
                    continue
                if match is None or match.accepts(record):
                    found.append((record, length))
                    if len(found) >= limit:
                        return found
            if len(ids) < page:
                break
        return found

    async def cancel(self, job_id: str) -> JobRecord:
        """End the job with ``CANCELED``: a queued job never starts, a running one is stopped."""
        record, _ = await self.get(job_id)
        if record.status.is_final:
            return record
        args = terminal_error_args(CANCELED, "the job was canceled", retention_s=self.settings.retention_s)
        result = parse_append(await self._append(keys=append_keys(job_id), args=args))
        if result.outcome is Outcome.APPENDED:
            await asyncio.to_thread(self._unqueue, job_id)
            logger.info(
                "job ended: canceled",
                extra={"job_id": job_id, "event": "ended", "outcome": "canceled", "error_code": CANCELED},
            )
        record, _ = await self.get(job_id)
        return record

    def _unqueue(self, job_id: str) -> None:
        """End RQ's view of a canceled job: off its queue if still there, canceled, expiring after the retention.

        A running job needs nothing more: its worker sees the terminal event and stops the horse
        within a second; one taken off the queue meanwhile is refused when claimed.
        """
        rqview.end_job(self.sync_client, job_id, rqview.RQStatus.CANCELED, self.settings.retention_s)
