"""Putting a job on the queue: its record and its RQ job in one atomic step, unless the queue is full.

The one way a job is created, by the gateway (calls) and by deployments (their build jobs), so a
job id anybody receives always has both. The job names its task by dotted path: nothing here
imports worker code. Each enqueue also rings the queue's doorbell, which wakes the workers
blocked on it (``worker.rqjobs``); the doorbell is short and expires, a wake-up hint only.
"""

from itertools import chain
from typing import Any

import redis

from factory.errors import ServiceUnavailable
from factory.jobs import InvocationRequest, JobRecord
from factory.retention import recent_writes
from factory.rqtask import TASK
from factory.settings import Settings
from factory.store import keys, rqview
from factory.store.scripts import ENQUEUE, ENQUEUE_LUA
from factory.store.wire import AsyncWire

# RQ's own deadline is a backstop behind the worker's: the worker kills a horse past it.
RQ_TIMEOUT_MARGIN_S = 30
DOORBELL_LENGTH = 64
DOORBELL_TTL_S = 60


def queue_for(settings: Settings, request: InvocationRequest) -> str:
    """The name of the request's RQ queue: its prefab's, or the deployments' for a build."""
    if request.kind == "deploy":
        return keys.deploy_queue_name(settings.queue_name)
    return keys.prefab_queue_name(settings.queue_name, request.prefab_id)


def _writes(client: redis.Redis, settings: Settings, record: JobRecord, request: InvocationRequest) -> list[Any]:
    """Every write that creates the job, flattened for :data:`ENQUEUE_LUA`'s ARGV (after the limit).

    RQ's job hash and queue entry are the installed RQ's own writes (``rqview.job_writes``; ``client``
    only records them, once per queue and function); nothing is sent here. Plain command lists:
    a redis-py pipeline to collect them cost more than all of them.
    """
    queue = queue_for(settings, request)
    doorbell = keys.doorbell_key(queue)
    commands: list[list[Any]] = [["HSET", keys.job_key(record.job_id), *chain.from_iterable(record.to_hash().items())]]
    if request.kind == "call":  # the recent jobs are callers' (a build is followed by its deployment)
        commands += recent_writes(record.job_id, record.created_ms, settings.retention_s)
    commands += rqview.job_writes(
        client,
        queue,
        request.job_id,
        TASK,
        [request.model_dump(mode="json")],
        timeout_s=int(request.timeout_s) + RQ_TIMEOUT_MARGIN_S,
        ttl_s=settings.retention_s,
        description=f"{request.prefab_id}.{request.function_name}",
    )
    commands += [
        ["RPUSH", doorbell, 1],
        ["LTRIM", doorbell, -DOORBELL_LENGTH, -1],
        ["EXPIRE", doorbell, DOORBELL_TTL_S],
    ]
    flat: list[Any] = []
    for command in commands:
        flat += [len(command), *command]
    return flat


def _check_room(settings: Settings, waiting: int) -> None:
    if waiting >= settings.max_queue_length:
        raise ServiceUnavailable(f"the queue is full ({settings.max_queue_length} jobs waiting)", retry_after_s=5)


def enqueue(client: redis.Redis, settings: Settings, record: JobRecord, request: InvocationRequest) -> None:
    """Create the job: record, recent list, RQ job, doorbell, in one atomic step; 503 when its queue is full."""
    writes = _writes(client, settings, record, request)
    queue = keys.rq_queue_key(queue_for(settings, request))
    waiting = client.register_script(ENQUEUE_LUA)(keys=[queue], args=[settings.max_queue_length, *writes])
    _check_room(settings, int(waiting))


async def enqueue_async(
    wire: AsyncWire, recorder: redis.Redis, settings: Settings, record: JobRecord, request: InvocationRequest
) -> None:
    """:func:`enqueue` on the event loop: the same writes (made with ``recorder``, a sync client that
    sends nothing here), sent on the gateway's lean connection (``factory.store.wire``) in one round trip."""
    writes = _writes(recorder, settings, record, request)
    queue = keys.rq_queue_key(queue_for(settings, request))
    waiting = await wire.run_script(ENQUEUE, [queue], [settings.max_queue_length, *writes])
    _check_room(settings, int(waiting))
