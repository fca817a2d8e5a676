"""A cheap SSE reader on a raw asyncio socket: one HTTP/1.1 GET, chunked body, every event parsed.

A benchmark client must cost far less than the server it measures, and must hold 10,000
streams in one process; an ``asyncio.Protocol`` does both (no task, no StreamReader per
stream). Every event's ``data`` is parsed with orjson and its ``id`` checked against the one
before it, so loss, repeats and reordering are counted for every stream. Both line endings
are accepted (the gateway's frames use ``\\n``, sse-starlette's pings and ``retry:`` ``\\r\\n``).
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from bench.caller import http_request, parse_head

# (seq, event, time.time_ns() right after parsing it)
EventHandler = Callable[[int, dict[str, Any], int], None]
TERMINAL = frozenset({"done", "error"})

_HEAD, _SIZE, _DATA = 0, 1, 2


@dataclass
class StreamStats:
    status: int = 0
    events: int = 0
    opened_ns: int = 0  # before connecting
    started_ns: int = 0  # first body bytes (the ``retry:`` frame or the first event)
    first_event_ns: int = 0
    last_event_ns: int = 0
    last_seq: int = 0
    gaps: int = 0  # events skipped over by seq
    repeats: int = 0  # events whose seq was not above the previous one
    terminal: str | None = None
    error: str | None = None


class SSEProtocol(asyncio.Protocol):
    """Reads one ``text/event-stream`` response; ``started`` and ``done`` are futures to await."""

    def __init__(self, request: bytes, on_event: EventHandler | None, loop: asyncio.AbstractEventLoop) -> None:
        self.stats = StreamStats(opened_ns=time.time_ns())
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self._request = request
        self._on_event = on_event
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._state = _HEAD
        self._need = 0
        self._rest = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.stats.error = self.stats.error or f"connection lost: {exc or 'closed by server'}"
            self._finish()

    def close(self) -> None:
        """Drop the connection at once (an idle reader leaving)."""
        if self._transport is not None:
            self._transport.abort()
        self._finish()

    def _finish(self) -> None:
        for future in (self.started, self.done):
            if not future.done():
                future.set_result(None)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Exception as exc:  # a malformed response ends this stream with the reason, never hangs it
            self.stats.error = f"cannot parse the response: {type(exc).__name__}: {exc}"
            self.close()

    def _receive(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while not self.done.done():
            if self._state == _HEAD:
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                self._head(bytes(buf[pos:end]))
                pos = end + 4
            elif self._state == _SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                self._need = int(bytes(buf[pos:end]).split(b";")[0], 16)
                pos = end + 2
                if self._need == 0:
                    self._finish()
                    break
                self._state = _DATA
            else:
                if len(buf) - pos < self._need + 2:
                    break
                chunk = bytes(buf[pos : pos + self._need])
                pos += self._need + 2
                self._state = _SIZE
                self._feed(chunk)
        del buf[:pos]

    def _head(self, head: bytes) -> None:
        self.stats.status, headers = parse_head(head)
        if self.stats.status != 200 or headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            self.stats.error = None if self.stats.status != 200 else "response is not chunked"
            self._finish()
            return
        self._state = _SIZE

    def _feed(self, chunk: bytes) -> None:
        if not self.started.done():
            self.stats.started_ns = time.time_ns()
            self.started.set_result(None)
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        frames = (self._rest + chunk).split(b"\n\n")
        self._rest = frames.pop()
        for frame in frames:
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        seq = 0
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"id:"):
                seq = int(line[3:])
        if not data:
            return  # a comment (ping) or a retry: line
        event: dict[str, Any] = orjson.loads(b"\n".join(data))
        now = time.time_ns()
        stats = self.stats
        if stats.events == 0:
            stats.first_event_ns = now
        stats.events += 1
        stats.last_event_ns = now
        if seq <= stats.last_seq:
            stats.repeats += 1
        else:
            stats.gaps += seq - stats.last_seq - 1
            stats.last_seq = seq
        if self._on_event is not None:
            self._on_event(seq, event, now)
        if event.get("type") in TERMINAL:
            stats.terminal = str(event["type"])


def _request(host: str, port: int, path: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    """A GET, or a POST of a JSON ``body`` (the seed's one-request form answers it with the stream)."""
    return http_request(host, port, path, {"Accept": "text/event-stream", "Cache-Control": "no-cache", **headers}, body)


async def open_stream(
    host: str,
    port: int,
    path: str,
    on_event: EventHandler | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> SSEProtocol:
    """Connect and send the GET (a POST with ``body``); the returned protocol reads the stream from then on."""
    loop = asyncio.get_running_loop()
    request = _request(host, port, path, headers or {}, body)
    _, protocol = await loop.create_connection(lambda: SSEProtocol(request, on_event, loop), host, port)
    return protocol


async def read_stream(
    host: str,
    port: int,
    path: str,
    on_event: EventHandler | None = None,
    timeout_s: float = 120.0,
    body: bytes | None = None,
) -> StreamStats:
    """Read a stream to its end (or ``timeout_s``) and return what was seen (``body``: POST it)."""
    began_ns = time.time_ns()
    protocol = await open_stream(host, port, path, on_event, body=body)
    protocol.stats.opened_ns = began_ns
    try:
        await asyncio.wait_for(asyncio.shield(protocol.done), timeout_s)
    except TimeoutError:
        protocol.stats.error = f"timed out after {timeout_s:g} s"
        protocol.close()
    return protocol.stats
