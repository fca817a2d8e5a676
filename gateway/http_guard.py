"""Connection hygiene for the gateway's uvicorn server: what uvicorn leaves open to a hostile client.

uvicorn (with httptools) bounds neither the size nor the count of request headers, never closes a
connection that sends nothing or sends its head byte by byte, and its ``limit_concurrency`` answers
503 to every request, health checks included. :class:`GuardedProtocol` is its HTTP protocol with:

- a limit on the bytes of a request head and on its header count (``431``, then closed), checked
  as the bytes arrive, before any route or auth runs;
- a head-read timeout: a connection whose head is not complete that long after it opened (or after
  the first byte of its next request) gets ``408`` and is closed, and one whose request body stops
  coming for as long is closed (unless the app is the one not reading it); idle keep-alive
  connections are closed by uvicorn's own ``timeout_keep_alive``;
- connection limits (:class:`ConnectionGuard`): past ``max_connections`` in all, or
  ``max_per_client`` from one address, a connection is still served ``/healthz`` and ``/readyz``
  but any other request gets the documented ``503`` with ``Retry-After``; past that band of
  ``health_reserve`` more it is closed at once. The total stays below the process's file limit
  (:func:`raise_file_limit` raises the soft limit to the hard one at start) with descriptors to
  spare for Redis, logs and files. Refusals are logged, at most once per ``LOG_EVERY_S``.
"""

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.connection import EXTENSION, ConnectionHooks

logger = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
# Descriptors kept for everything but client connections: Redis pools, logs, files, the listener.
FD_RESERVE = 256
LOG_EVERY_S = 10.0
RETRY_AFTER_S = 2


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one where allowed; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int
    max_headers: int
    timeout_s: float


@dataclass
class ConnectionGuard:
    """Counts a server's open connections, in all and per client address, and says how to serve each."""

    max_connections: int
    max_per_client: int  # 0: no limit per address (behind a proxy every connection comes from it)
    health_reserve: int
    head: HeadLimits
    open_total: int = 0
    per_client: dict[str, int] = field(default_factory=dict)
    _refused_since_log: int = 0
    _last_log: float = 0.0

    @classmethod
    def for_file_limit(
        cls, fd_limit: int, *, max_connections: int, max_per_client: int, head: HeadLimits
    ) -> "ConnectionGuard":
        """A guard whose connections, reserve included, stay :data:`FD_RESERVE` below ``fd_limit``."""
        health_reserve = max(8, min(100, fd_limit // 100))
        ceiling = max(1, fd_limit - FD_RESERVE - health_reserve)
        limit = ceiling if max_connections <= 0 else min(max_connections, ceiling)
        if 0 < max_connections and ceiling < max_connections:
            logger.warning("the open-file limit (%d) allows %d connections, not %d", fd_limit, ceiling, max_connections)
        return cls(limit, max_per_client, health_reserve, head)

    def admit(self, client: str) -> bool | None:
        """Count a new connection: True to serve it, False to serve health checks only, None to close it."""
        if self.open_total >= self.max_connections + self.health_reserve:
            self.refused(f"{self.open_total} connections open")
            return None
        self.open_total += 1
        count = self.per_client.get(client, 0) + 1
        self.per_client[client] = count
        return self.open_total <= self.max_connections and (self.max_per_client <= 0 or count <= self.max_per_client)

    def release(self, client: str) -> None:
        self.open_total -= 1
        count = self.per_client.get(client, 0) - 1
        if count > 0:
            self.per_client[client] = count
        else:
            self.per_client.pop(client, None)

    def refused(self, why: str) -> None:
        """Log a refusal, at most once per :data:`LOG_EVERY_S` (with how many since the last line)."""
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            logger.warning(
                "refused a connection: %s (limits: %d connections, %d per client); %d refused since the last report",
                why,
                self.max_connections,
                self.max_per_client,
                self._refused_since_log,
            )
            self._last_log = now
            self._refused_since_log = 0


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a request that was answered and closed."""


def _response(status: bytes, message: str, *extra: bytes) -> bytes:
    body = b'{"error":{"code":"%s","message":"%s"}}' % (
        status.split(b" ", 1)[1].upper().replace(b" ", b"_"),
        message.encode(),
    )
    head = [b"HTTP/1.1 " + status, b"content-type: application/json", b"content-length: %d" % len(body)]
    return b"\r\n".join([*head, *extra, b"connection: close", b"", body])


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of a :class:`ConnectionGuard`; see the module docstring."""

    guard: ConnectionGuard  # set on the subclass :func:`protocol_for` makes, one per server
    _hooks: ConnectionHooks  # made with the connection (``gateway.connection``)

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._admitted: bool | None = None
        self._address = ""
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._closed_by_guard = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._hooks = ConnectionHooks(transport.abort)  # one per connection: every request's scope shares it
        self._address = self.client[0] if self.client else ""
        self._admitted = self.guard.admit(self._address)
        if self._admitted is None:
            self._closed_by_guard = True
            transport.abort()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._hooks.ended("disconnect")
        if self._admitted is not None:
            self.guard.release(self._address)
            self._admitted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closed_by_guard:
            return
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if not self._closed_by_guard:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._reading_head and self._head_bytes > self.guard.head.max_bytes:
            self._refuse(b"431 Request Header Fields Too Large", "the request head is too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # Lets a stream hear of its connection's end and drop one it cannot end (``gateway.connection``).
        self.scope["extensions"] = {EXTENSION: {"hooks": self._hooks}}  # ASGI: an extension is a dict
        self._header_count = 0
        if not self._reading_head:  # the next request on a kept-alive connection
            self._reading_head = True
            self._head_bytes = 0
            self._arm_head_timer()

    def shutdown(self) -> None:
        """The server's graceful shutdown: a stream in progress ends by itself, and the connection after it."""
        super().shutdown()
        self._hooks.ended("shutdown")

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.guard.head.max_bytes:
            self._refuse(b"431 Request Header Fields Too Large", "the request head is too large", raise_=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.guard.head.max_headers:
            self._refuse(b"431 Request Header Fields Too Large", "too many request headers", raise_=True)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._reading_head = False
        if not self._admitted:
            path = httptools.parse_url(self.url).path.decode("ascii", "replace")
            if path not in HEALTH_PATHS:
                self.guard.refused(f"{self.guard.open_total} connections open, {self._address} over its share")
                self._refuse(
                    b"503 Service Unavailable",
                    "this gateway serves its maximum of connections",
                    b"retry-after: %d" % RETRY_AFTER_S,
                    raise_=True,
                )
        super().on_headers_complete()
        self._arm_timer(self._body_stalled)  # disarmed when the body is complete (at once when there is none)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm_timer(self._body_stalled)

    def on_message_complete(self) -> None:
        self._disarm_head_timer()
        super().on_message_complete()

    def _refuse(self, status: bytes, message: str, *extra: bytes, raise_: bool = False) -> None:
        """Answer ``status`` and close; inside a parser callback, also stop the parser."""
        if not self._closed_by_guard:
            self._closed_by_guard = True
            self._disarm_head_timer()
            if not self.transport.is_closing():
                self.transport.write(_response(status, message, *extra))
                self.transport.close()
        if raise_:
            raise _Refused(message)

    def _arm_head_timer(self) -> None:
        self._arm_timer(self._head_timed_out)

    def _arm_timer(self, callback: Callable[[], None]) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.guard.head.timeout_s, callback)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self.guard.refused(f"a request head took over {self.guard.head.timeout_s:g} s")
            self._refuse(b"408 Request Timeout", "the request head took too long")

    def _body_stalled(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app is not taking the body: the wait is ours, not the client's
            self._arm_timer(self._body_stalled)
            return
        self.guard.refused(f"no byte of a request body for {self.guard.head.timeout_s:g} s")
        self._closed_by_guard = True
        self.transport.close()


def protocol_for(guard: ConnectionGuard) -> type[GuardedProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to this server's guard."""
    return type("GatewayProtocol", (GuardedProtocol,), {"guard": guard})
