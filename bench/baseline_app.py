"""The no-factory ceiling: a FastAPI app streaming SSE straight from in-process generators.

This is what a user gets by writing the generator into an sse-starlette endpoint themselves:
no Redis, no worker, no relay. It runs under the same uvicorn as the gateway (same event
loop and HTTP implementation, whatever is installed) and yields the same event shape as
bench-kit's functions, as plain ``{"id", "data"}`` dicts, sse-starlette's documented usage.

``python -m bench.baseline_app PORT`` serves it on 127.0.0.1.
"""

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
import uvicorn
from fastapi import FastAPI, Query
from sse_starlette import EventSourceResponse


def _event(seq: int, event: dict[str, object]) -> dict[str, object]:
    return {"id": str(seq), "data": orjson.dumps(event).decode()}


async def _firehose(count: int, payload_bytes: int) -> AsyncIterator[dict[str, object]]:
    payload = "x" * payload_bytes
    for i in range(1, count + 1):
        yield _event(i, {"type": "progress", "data": {"i": i, "p": payload}})
    yield _event(count + 1, {"type": "done", "data": {"count": count}})


async def _paced(count: int, rate_hz: float) -> AsyncIterator[dict[str, object]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(1, count + 1):
        delay_s = start + i / rate_hz - loop.time()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        yield _event(i, {"type": "progress", "data": {"i": i, "t_ns": time.time_ns()}})
    yield _event(count + 1, {"type": "done", "data": {"count": count}})


async def _idle() -> AsyncIterator[dict[str, object]]:
    yield {"retry": 1000}  # the stream's first bytes at once, as the gateway sends them
    await asyncio.Event().wait()
    yield _event(1, {"type": "done"})  # never reached: the reader leaves first


def create_app() -> FastAPI:
    app = FastAPI(title="bench baseline")

    @app.get("/stream")
    async def stream(count: Annotated[int, Query()], payload_bytes: int = 0) -> EventSourceResponse:
        return EventSourceResponse(_firehose(count, payload_bytes))

    @app.get("/paced")
    async def paced(count: Annotated[int, Query()], rate_hz: float) -> EventSourceResponse:
        return EventSourceResponse(_paced(count, rate_hz))

    @app.get("/idle")
    async def idle() -> EventSourceResponse:
        return EventSourceResponse(_idle())

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ok": True}

    return app


def main() -> None:
    port = int(sys.argv[1])
    uvicorn.run("bench.baseline_app:create_app", factory=True, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
