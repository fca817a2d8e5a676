"""Putting a job on the queue: its record and its RQ job in one MULTI/EXEC.

The one way a job is created, by the gateway (calls) and by deployments (their build jobs), so a
job id anybody receives always has both. The job names its task by dotted path: nothing here
imports worker code. Each enqueue also rings the queue's doorbell, which wakes the workers
blocked on it (``worker.rqjobs``); the doorbell is short and expires, a wake-up hint only.
"""

import redis

from factory.errors import ServiceUnavailable
from factory.jobs import InvocationRequest, JobRecord
from factory.retention import note_recent
from factory.settings import Settings
from factory.store import keys, rqview

TASK = "worker.tasks.run_invocation"
# RQ's own deadline is a backstop behind the worker's: the worker kills a horse past it.
RQ_TIMEOUT_MARGIN_S = 30
DOORBELL_LENGTH = 64
DOORBELL_TTL_S = 60


def queue_for(settings: Settings, request: InvocationRequest) -> str:
    """The name of the request's RQ queue: its prefab's, or the deployments' for a build."""
    if request.kind == "deploy":
        return keys.deploy_queue_name(settings.queue_name)
    return keys.prefab_queue_name(settings.queue_name, request.prefab_id)


def enqueue(client: redis.Redis, settings: Settings, record: JobRecord, request: InvocationRequest) -> None:
    """Create the job: record, recent list, RQ job, doorbell; 503 when its queue is full."""
    queue = queue_for(settings, request)
    if rqview.queue_length(client, queue) >= settings.max_queue_length:
        raise ServiceUnavailable(f"the queue is full ({settings.max_queue_length} jobs waiting)", retry_after_s=5)
    doorbell = keys.doorbell_key(queue)
    with client.pipeline() as pipe:
        pipe.multi()
        pipe.hset(keys.job_key(record.job_id), mapping=record.to_hash())  # type: ignore[arg-type]
        if request.kind == "call":  # the recent jobs are callers' (a build is followed by its deployment)
            note_recent(pipe, record.job_id, record.created_ms, settings.retention_s)
        rqview.add_job_on(
            pipe,
            client,
            queue,
            request.job_id,
            TASK,
            [request.model_dump(mode="json")],
            timeout_s=int(request.timeout_s) + RQ_TIMEOUT_MARGIN_S,
            ttl_s=settings.retention_s,
            description=f"{request.prefab_id}.{request.function_name}",
        )
        pipe.rpush(doorbell, 1)
        pipe.ltrim(doorbell, -DOORBELL_LENGTH, -1)
        pipe.expire(doorbell, DOORBELL_TTL_S)
        pipe.execute()
