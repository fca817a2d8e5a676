"""JobService: the gateway's one place that creates, reads and cancels jobs.

Enqueueing goes through RQ (sync) in a worker thread, in the same MULTI/EXEC as the job
record, so a job id a caller receives always has both. The gateway names the task by dotted
path and never imports worker code.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from rq import Queue
from rq.job import JobStatus as RQStatus
from rq.serializers import JSONSerializer

from factory import keys
from factory.catalog import Catalog, Target
from factory.errors import JobNotFound, ServiceUnavailable
from factory.eventlog import APPEND_LUA, Outcome, append_keys, parse_append, terminal_error_args
from factory.events import CANCELED
from factory.jobs import InvocationRequest, JobRecord, JobStatus, new_job_id, now_ms
from factory.retention import end_rq_job, note_recent
from factory.settings import Settings
from factory.validation import validate_file_groups, validate_inputs

logger = logging.getLogger(__name__)

TASK = "worker.tasks.run_invocation"
# RQ's own deadline is a backstop behind the worker's: it kills a horse that ignores SIGALRM.
RQ_TIMEOUT_MARGIN_S = 30


@dataclass(frozen=True)
class Submitted:
    record: JobRecord
    streaming: bool


class JobService:
    def __init__(self, settings: Settings, client: aioredis.Redis, sync_client: redis.Redis, catalog: Catalog):
        self.settings = settings
        self.client = client
        self.sync_client = sync_client
        self.catalog = catalog
        self.queue = Queue(settings.queue_name, connection=sync_client, serializer=JSONSerializer)
        self._append = client.register_script(APPEND_LUA)

    def prepare(
        self,
        prefab_id: str | None,
        function_name: str,
        inputs: dict[str, Any],
        files: dict[str, list[str]],
        *,
        retries: int | None = None,
    ) -> tuple[Target, InvocationRequest]:
        """Resolve and validate a call; nothing touches Redis yet. ``retries`` overrides the manifest's."""
        target = self.catalog.resolve(prefab_id, function_name)
        resolved = validate_inputs(target.function, inputs)
        validate_file_groups(target.function, files)
        request = InvocationRequest(
            job_id=new_job_id(),
            prefab_id=target.manifest.id,
            function_name=target.function.name,
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
            status=JobStatus.QUEUED,
            created_ms=request.created_ms,
            streaming=target.function.streaming,
        )
        await asyncio.to_thread(self._enqueue, record, request)
        return record

    def _enqueue(self, record: JobRecord, request: InvocationRequest) -> None:
        if self.queue.count >= self.settings.max_queue_length:
            raise ServiceUnavailable(
                f"the queue is full ({self.settings.max_queue_length} jobs waiting)", retry_after_s=5
            )
        with self.sync_client.pipeline() as pipe:
            pipe.multi()
            pipe.hset(keys.job_key(record.job_id), mapping=record.to_hash())  # type: ignore[arg-type]
            note_recent(pipe, record.job_id, record.created_ms, self.settings.retention_s)
            self.queue.enqueue_call(
                TASK,
                args=[request.model_dump(mode="json")],
                job_id=request.job_id,
                timeout=int(request.timeout_s) + RQ_TIMEOUT_MARGIN_S,
                result_ttl=self.settings.retention_s,
                failure_ttl=self.settings.retention_s,
                description=f"{request.prefab_id}.{request.function_name}",
                pipeline=pipe,
            )
            pipe.execute()

    async def get(self, job_id: str) -> tuple[JobRecord, int]:
        """The job's record and its last event id; :class:`JobNotFound` when unknown or expired."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.job_key(job_id))
            pipe.llen(keys.events_key(job_id))
            fields, length = await pipe.execute()
        if not fields:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its retention ended)")
        return JobRecord.from_hash(fields), int(length)

    async def recent(self, limit: int) -> list[tuple[JobRecord, int]]:
        ids: list[bytes] = await self.client.zrevrange(keys.recent_jobs_key(), 0, limit - 1)  # type: ignore[assignment]
        found: list[tuple[JobRecord, int]] = []
        for raw in ids:
            try:
                found.append(await self.get(raw.decode()))
            except JobNotFound:
                await self.client.zrem(keys.recent_jobs_key(), raw)
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
        record, _ = await self.get(job_id)
        return record

    def _unqueue(self, job_id: str) -> None:
        """Take a canceled job off the RQ queue if it is still there, and let RQ's hash of it expire.

        A running job needs nothing more: its worker sees the terminal event and stops the horse
        within a second; one taken off the queue meanwhile is refused when claimed.
        """
        end_rq_job(self.sync_client, self.queue.key, job_id, RQStatus.CANCELED, self.settings.retention_s)
