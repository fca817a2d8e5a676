"""The gateway's access log: one line per request, written once its response is complete.

uvicorn's own access log writes its line when a response starts, before the response's first
byte leaves: every answer waited for its log line. :class:`AccessLog` (an ASGI middleware, with
uvicorn's turned off) writes it after the response's last byte instead, as nginx does, with the
response's status and how long it took (a stream's line comes when the stream ends).

Job tokens never reach it: the ``token`` query parameter is written ``token=[redacted]``. The
README recommends ``?token=`` for browsers (an ``EventSource`` cannot send headers), so every such
request would otherwise write a live credential to the log.
"""

import logging
import time
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOGGER = "gateway.access"
REDACTED = "[redacted]"

logger = logging.getLogger(ACCESS_LOGGER)


def redact(query: str) -> str:
    """``query`` with the value of every ``token`` parameter replaced, its name read as the app reads
    it (``%74oken`` is ``token`` too); unchanged when it has none."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(name.lower() == "token" for name, _ in pairs):
        return query
    return urlencode([(name, REDACTED if name.lower() == "token" else value) for name, value in pairs], safe="[]")


def _request_line(scope: Scope) -> str:
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = (scope.get("query_string") or b"").decode("latin-1")
    target = f"{path}?{redact(query)}" if query else path
    return f"{scope['method']} {target} HTTP/{scope.get('http_version', '1.1')}"


class AccessLog:
    """Logs each HTTP request as ``<client> - "<method> <path> HTTP/<version>" <status>`` (``status`` and
    ``duration_s`` as fields too) once the app is done with it; a request the app failed before
    answering is logged with 500, the status the server's error handler answers it with."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            logger.info(
                '%s - "%s" %d',
                f"{client[0]}:{client[1]}" if client else "-",
                _request_line(scope),
                status,
                extra={"status": status, "duration_s": round(time.perf_counter() - began, 6)},
            )
