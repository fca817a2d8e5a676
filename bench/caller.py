"""The benchmark's caller: JSON ``POST``\\ s over kept-alive HTTP/1.1 connections on raw asyncio sockets.

The benchmark runs on the machine it measures, so what its own process spends is taken from the
servers under test. httpx spent about 5 ms of the benchmark's CPU per ``POST /invoke`` with 64 in
flight (1,000 calls), more than the factory spends on the whole job, and on the same two cores:
every throughput figure then measured the client as much as either stack. This caller does the
one thing the benchmark needs, as :mod:`bench.sse_client` does for streams: it writes the request
in one piece and reads a ``Content-Length`` answer. Every stack is driven through it alike.

Connections are kept per server and reused one request at a time; one the server closed while
idle is dropped before use. A request whose connection breaks is not sent again (a ``POST`` that
may have reached the server must not run twice): it raises.
"""

import asyncio
from typing import Any, cast
from urllib.parse import urlsplit

import orjson


class CallFailed(Exception):
    """The connection broke before the whole answer came, or the answer was not HTTP/1.1 as expected."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._buf = bytearray()
        self._answer: asyncio.Future[tuple[int, bytes, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(CallFailed(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._answer is None or self._answer.done():
            return
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            status, length, keep = _head(bytes(self._buf[:end]))
        except (ValueError, IndexError) as exc:
            self._answer.set_exception(CallFailed(f"cannot parse the answer's head: {exc}"))
            return
        if len(self._buf) < end + 4 + length:
            return
        body = bytes(self._buf[end + 4 : end + 4 + length])
        del self._buf[: end + 4 + length]
        self._answer.set_result((status, body, keep))

    async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        assert self.transport is not None
        self._answer = self._loop.create_future()
        self.transport.write(raw)
        return await self._answer


def http_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    """An HTTP/1.1 request in one piece: a GET, or a POST of a JSON ``body``."""
    method = "GET" if body is None else "POST"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    """An answer's status and headers (names lower-cased), from its head without the blank line."""
    status_line, *lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ", 2)[1]), headers


def _head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and whether the connection stays open, from an answer's head."""
    status, headers = parse_head(head)
    if b"transfer-encoding" in headers:
        raise ValueError("a chunked answer (this caller reads Content-Length answers only)")
    return status, int(headers.get(b"content-length", b"0")), b"close" not in headers.get(b"connection", b"").lower()


class Caller:
    """Kept-alive connections per server; :meth:`post_json` sends one call on one of them."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post_json(self, url: str, body: Any) -> tuple[int, bytes]:
        """``POST`` ``body`` as JSON to ``url``; the answer's status and body."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        raw = http_request(host, port, parts.path or "/", {}, orjson.dumps(body))
        connection = await self._connection(host, port)
        try:
            status, answer, keep = await connection.request(raw)
        except BaseException:
            self._drop(connection)
            raise
        if keep and not connection.lost:
            self._idle.setdefault((host, port), []).append(connection)
        else:
            self._drop(connection)
        return status, answer

    async def _connection(self, host: str, port: int) -> _Connection:
        idle = self._idle.get((host, port), [])
        while idle:
            connection = idle.pop()
            if not connection.lost and connection.transport is not None and not connection.transport.is_closing():
                return connection
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: _Connection(loop), host, port)
        return connection

    @staticmethod
    def _drop(connection: _Connection) -> None:
        if connection.transport is not None:
            connection.transport.close()

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                self._drop(connection)
        self._idle.clear()
