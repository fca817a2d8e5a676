"""A lean Redis connection for the commands on the path a caller waits on for a first event.

redis-py's clients run a long chain of Python for each command: the connection pool, the retry
wrapper, timeouts, the stream reader, the observability hooks. On a machine whose caches are cold
between requests, that chain measured ~330 µs (asyncio) and ~200 µs (blocking) more per command
than the same bytes written to a socket and parsed by hiredis (``bench/RESULTS.md``). The
commands on a call's path go through here: the gateway's enqueue (on a connection of its own),
its log reads (the stream's first read, the relay's pages) and the work horse's appends; the
relay hub's pub/sub connection (``gateway.relay_hub``) is made the same way. Everything else
keeps redis-py.

What this keeps of redis-py: what a URL means (``redis.connection.parse_url``: host and port or
a unix socket, db, username and password, client name, TLS and its options), its exceptions (a
lost connection is ``ConnectionError``, a late reply ``TimeoutError``, an error reply what
redis-py's parser makes of it: ``NoScriptError``, ``BusyLoadingError`` and so on), and hiredis
for the protocol. Sockets get TCP keepalive, so a peer gone silent is found while idle.

Invariants: Redis answers a connection's commands in order, so each reply goes to the oldest
command still waiting, and commands of concurrent callers pipeline on the one connection. A
connection that failed, or whose reply came too late, is dropped with every command waiting on
it (each fails with ``ConnectionError``); the next command connects afresh, and a connection
that failed on its way up is closed. A command is never sent twice: once written, whether it
ran is unknown, and the caller decides what to do."""

import asyncio
import os
import socket
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import hiredis
from redis._parsers.base import BaseParser
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

CONNECT_TIMEOUT_S = 2.0  # as redis-py's clients here (``factory.connections``)
READ_SIZE = 65536


@dataclass(frozen=True)
class LuaScript:
    """A script run by its SHA, its source sent (and so loaded) only when Redis does not know it."""

    source: str
    sha: str


@dataclass(frozen=True)
class Endpoint:
    """Where a ``REDIS_URL`` points, and what a new connection says first (AUTH, SELECT)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket
    tls: ssl.SSLContext | None = None
    greeting: tuple[tuple[Any, ...], ...] = ()

    @classmethod
    def from_url(cls, url: str) -> "Endpoint":
        options = parse_url(url)  # type: ignore[no-untyped-call]
        greeting: list[tuple[Any, ...]] = []
        if options.get("password") is not None:
            username = options.get("username")
            greeting.append(("AUTH", username, options["password"]) if username else ("AUTH", options["password"]))
        if options.get("client_name"):
            greeting.append(("CLIENT", "SETNAME", options["client_name"]))
        if int(options.get("db") or 0):
            greeting.append(("SELECT", int(options["db"])))
        return cls(
            host=options.get("host") or "localhost",
            port=int(options.get("port") or 6379),
            path=options.get("path"),
            tls=_tls(options) if url.startswith("rediss://") else None,
            greeting=tuple(greeting),
        )


def _tls(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS a ``rediss://`` URL asks for, with redis-py's URL options (``ssl_cert_reqs``,
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    requirement = str(options.get("ssl_cert_reqs", "required")).lower()
    if requirement == "none" or options.get("ssl_check_hostname") is False:
        context.check_hostname = False
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(requirement, ssl.CERT_REQUIRED)
    return context


def keep_alive(sock: Any) -> None:
    """No Nagle delay, and TCP keepalive probes, so a peer gone silent (a NAT or a balancer that
    forgot the connection) is found by the kernel within about 25 s of quiet, not at the next command."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except (OSError, AttributeError):
        pass  # a transport without a real socket: the defaults stay


_P = TypeVar("_P", bound=asyncio.Protocol)


async def open_connection(
    endpoint: Endpoint, factory: Callable[[], _P], greeted: Callable[[_P], Awaitable[None]]
) -> _P:
    """A connected protocol that has said the endpoint's greeting (``greeted`` waits for its answers).

    Whatever fails or is cancelled on the way closes the connection it opened; a failure is
    redis-py's ``ConnectionError`` (a refused greeting, an unreachable or silent server)."""
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            if endpoint.path is not None:
                transport, protocol = await loop.create_unix_connection(factory, endpoint.path)
            else:
                transport, protocol = await loop.create_connection(
                    factory, endpoint.host, endpoint.port, ssl=endpoint.tls
                )
            keep_alive(transport.get_extra_info("socket"))
            await greeted(protocol)
        return protocol
    except BaseException as exc:
        if transport is not None:
            transport.abort()
        if isinstance(exc, ResponseError):
            raise RedisConnectionError(f"Redis refused the connection: {exc}") from exc
        if isinstance(exc, OSError | TimeoutError):
            raise RedisConnectionError(f"cannot connect to Redis: {str(exc) or type(exc).__name__}") from exc
        raise


class Attempts(Generic[_P]):
    """Connection attempts made one at a time: every caller that finds no live connection waits on
    the attempt in progress (each at most :data:`CONNECT_TIMEOUT_S`, however many arrive while Redis
    is away), and a failed attempt is left for the next caller to start again."""

    def __init__(self, connect: Callable[[], Coroutine[Any, Any, _P]], name: str) -> None:
        self._connect = connect
        self._name = name
        self._task: asyncio.Task[_P] | None = None

    async def wait(self) -> _P:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._connect(), name=self._name)
            self._task.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(self._task)

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _reader() -> hiredis.Reader:
    return hiredis.Reader(replyError=ResponseError)


def failure(reply: ResponseError) -> RedisError:
    """An error reply as redis-py raises it: ``NoScriptError`` for a missing script, a
    ``ConnectionError`` for LOADING or a full server (so callers retry it), and so on."""
    error: RedisError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


class _Protocol(asyncio.Protocol):
    """One connection: commands are written as they come, replies handed out in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = _reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()
                if future.done():  # its caller was cancelled: the reply is only consumed
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(failure(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.drop(f"unreadable reply from Redis: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiting(f"connection to Redis lost{f': {exc}' if exc else ''}")

    def drop(self, reason: str) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiting(reason)

    def _fail_waiting(self, reason: str) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(reason))

    def send(self, packed: bytes, replies: int = 1) -> "list[asyncio.Future[Any]]":
        """Write ``packed`` (``replies`` commands); a future per command, answered in order."""
        if self.lost or self.transport is None:
            raise RedisConnectionError("the connection to Redis is lost")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self.waiting.extend(futures)
        self.transport.write(packed)
        return futures


class AsyncWire:
    """A lean connection of the gateway (see the module's docstring); safe for concurrent callers.

    Callers that find it unconnected share one connection attempt (each waits at most
    :data:`CONNECT_TIMEOUT_S`, however many arrive while Redis is away)."""

    def __init__(self, url: str, *, reply_timeout_s: float = 5.0) -> None:
        self.endpoint = Endpoint.from_url(url)
        self.reply_timeout_s = reply_timeout_s
        self._protocol: _Protocol | None = None
        self._attempts = Attempts(self._connect, "wire-connect")

    async def run_script(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL when Redis lost the script (a restart): it is loaded by that run."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def call(self, *args: Any) -> Any:
        """One command's reply (a redis-py exception for an error reply, a lost connection or a late reply)."""
        return (await self.pipeline(args))[0]

    async def pipeline(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Several commands in one write and one round trip: their replies, in order (an error reply
        among them raises, once all have come)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._attempts.wait()
        try:
            packed = b"".join([hiredis.pack_command(command) for command in commands])
        except TypeError as exc:
            raise ValueError(f"cannot send {commands} to Redis: {exc}") from exc
        futures = protocol.send(packed, len(commands))
        try:
            async with asyncio.timeout(self.reply_timeout_s):
                with suppress(Exception):  # an error reply is raised below, once every reply is in
                    await futures[-1]  # replies come in order: the last one answered, all are
        except TimeoutError as exc:
            # Later replies would no longer match their commands: the connection goes, and with it
            # every command waiting on it, whose outcome is as unknown as this one's.
            protocol.drop(f"dropped: a reply took longer than {self.reply_timeout_s:g} s")
            raise RedisTimeoutError(f"Redis did not answer within {self.reply_timeout_s:g} s") from exc
        finally:
            for future in futures:  # each failure retrieved (or the wait given up), so none is reported unread
                if not future.done():
                    future.cancel()  # a cancelled caller's: its reply is consumed unread
                elif not future.cancelled():
                    future.exception()
        for future in futures:
            if (error := future.exception()) is not None:
                raise error
        return [future.result() for future in futures]

    async def _connect(self) -> _Protocol:
        async def greeted(protocol: _Protocol) -> None:
            for command in self.endpoint.greeting:
                await protocol.send(hiredis.pack_command(command))[0]

        self._protocol = await open_connection(self.endpoint, _Protocol, greeted)
        return self._protocol

    def close(self) -> None:
        self._attempts.cancel()
        if self._protocol is not None and not self._protocol.lost:
            self._protocol.drop("closed")
        self._protocol = None


class Wire:
    """The blocking twin of :class:`AsyncWire`, for a work horse: one command at a time (a lock).

    Made before the worker forks its horses and connected at first use in the process using it,
    so a forked horse never shares its parent's socket.
    """

    def __init__(self, url: str, *, reply_timeout_s: float = 10.0) -> None:
        self.endpoint = Endpoint.from_url(url)
        self.reply_timeout_s = reply_timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = 0
        self._reader = _reader()

    def run_script(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL when Redis lost the script (a restart): it is loaded by that run."""
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.call("EVAL", script.source, len(keys), *keys, *args)

    def call(self, *args: Any) -> Any:
        """One command's reply (a redis-py exception for an error reply, a lost connection or a late reply)."""
        try:
            packed = hiredis.pack_command(args)
        except TypeError as exc:
            raise ValueError(f"cannot send {args[0]!r} to Redis: {exc}") from exc
        with self._lock:
            sock = self._connected()
            reply = self._exchange(sock, packed)
        if isinstance(reply, ResponseError):
            raise failure(reply)
        return reply

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._pid == os.getpid():
            return self._sock
        self._sock, self._pid, self._reader = None, os.getpid(), _reader()  # a parent's socket is left alone
        endpoint = self.endpoint
        sock: socket.socket | None = None
        try:
            if endpoint.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(CONNECT_TIMEOUT_S)
                sock.connect(endpoint.path)
            else:
                sock = socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_TIMEOUT_S)
                keep_alive(sock)
                if endpoint.tls is not None:
                    sock = endpoint.tls.wrap_socket(sock, server_hostname=endpoint.host)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        sock.settimeout(self.reply_timeout_s)
        for command in endpoint.greeting:
            reply = self._exchange(sock, hiredis.pack_command(command))
            if isinstance(reply, ResponseError):
                sock.close()
                raise RedisConnectionError(f"Redis refused the connection: {reply}")
        self._sock = sock
        return sock

    def _exchange(self, sock: socket.socket, packed: bytes) -> Any:
        """Send one command and read its reply; a failure drops the connection (its replies are lost)."""
        try:
            sock.sendall(packed)
            while (reply := self._reader.gets()) is False:
                data = sock.recv(READ_SIZE)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                self._reader.feed(data)
            return reply
        except TimeoutError as exc:
            self._drop(sock)
            raise RedisTimeoutError(f"Redis did not answer within {self.reply_timeout_s:g} s") from exc
        except (OSError, hiredis.ProtocolError) as exc:
            self._drop(sock)
            raise RedisConnectionError(f"connection to Redis lost: {exc}") from exc

    def _drop(self, sock: socket.socket) -> None:
        sock.close()
        self._sock, self._reader = None, _reader()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None and self._pid == os.getpid():
                self._drop(self._sock)
