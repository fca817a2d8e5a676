"""The peer stack's HTTP side: FastAPI relaying Celery jobs' events as resumable SSE.

``POST /invoke`` sends the Celery task (``apply_async`` with the job id as the task id) and answers
202 with the job id. ``GET /jobs/{id}/events`` subscribes to the job's channel and waits for Redis
to confirm, then replays the job's list after ``Last-Event-ID``, then follows the channel, dropping
any message whose index it has already sent (the replay and the channel overlap) and reading the
list again should a message ever skip ahead; it ends after a ``done`` or ``error`` event. Frames
are the factory's: ``id: <index>\\ndata: <event JSON>\\n\\n``, one per event.

Written as a careful team would: one pub/sub connection per stream, taken from and given back to
the shared pool; the enqueue is Celery's own (a blocking LPUSH of well under a millisecond, called
on the event loop: no thread hop, the cheaper choice for a call's latency). Served by uvicorn like
the gateway (uvloop and httptools when installed), without access logs.

``python -m bench.peer_app PORT REDIS_URL`` serves it on 127.0.0.1.
"""

import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from bench import keys, peer_stack

TERMINAL = (b'"type":"done"', b'"type":"error"')
MAX_REDIS_CONNECTIONS = 10_000  # redis-server's default maxclients
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class InvokeBody(BaseModel):
    prefab_id: str
    function_name: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class Accepted(BaseModel):
    job_id: str
    status: str = "queued"


def _frame(index: int, raw: bytes) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (index, raw)


def _terminal(raw: bytes) -> bool:
    return orjson.loads(raw).get("type") in ("done", "error") if any(t in raw for t in TERMINAL) else False


async def _events(client: aioredis.Redis, job_id: str, last: int) -> AsyncIterator[bytes]:
    list_key = keys.peer_events_key(job_id)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(keys.peer_channel(job_id))
        while (await pubsub.get_message(timeout=10.0)) is None:  # the subscribe confirmation
            pass
        replay = cast(list[bytes], await client.lrange(list_key, last, -1))
        for raw in replay:
            last += 1
            yield _frame(last, raw)
            if _terminal(raw):
                return
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            head, _, raw = message["data"].partition(b"\n")
            index = int(head)
            if index <= last:
                continue  # already sent from the list
            if index > last + 1:  # never expected (subscribed before the replay), but never lose one
                missed = cast(list[bytes], await client.lrange(list_key, last, index - 2))
                for earlier in missed:
                    last += 1
                    yield _frame(last, earlier)
            last = index
            yield _frame(index, raw)
            if _terminal(raw):
                return
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def create_app(redis_url: str) -> FastAPI:
    app = FastAPI(title="peer stack")
    celery = peer_stack.make_app(redis_url)
    # One pub/sub connection per open stream: the pool may grow to Redis's own client limit.
    client = aioredis.Redis.from_url(redis_url, max_connections=MAX_REDIS_CONNECTIONS)

    @app.post("/invoke", status_code=202)
    async def invoke(body: InvokeBody) -> Accepted:
        job_id = uuid.uuid4().hex
        peer_stack.submit(celery, job_id, body.function_name, body.inputs)
        return Accepted(job_id=job_id)

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: str, last_event_id: str | None = Header(default=None)) -> StreamingResponse:
        last = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        return StreamingResponse(_events(client, job_id, last), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ok": True}

    return app


def main() -> None:
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    app = create_app(redis_url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, timeout_keep_alive=65)


if __name__ == "__main__":
    main()
