"""What a streaming response may ask of its connection, through the ASGI scope's extensions.

The gateway's server (:class:`gateway.http_guard.GuardedProtocol`) puts its connection's
:class:`ConnectionHooks` in every request's ``scope["extensions"][EXTENSION]["hooks"]``. A long
response (an SSE stream) registers a callback that the protocol calls once, when the connection
is lost or the server begins a graceful shutdown, so the stream learns of its end with no task of its own
waiting on ``receive()``; and it can drop a connection it cannot end cleanly (``abort``).

Invariant: each registered callback runs at most once, and never after the response unregistered
it. Under another ASGI server the extension is absent and the response watches ``receive()``
instead (``gateway.streaming``).
"""

from collections.abc import Callable, Mapping
from typing import Any

EXTENSION = "gateway.connection"


class ConnectionHooks:
    """One request's link to its connection: ``abort`` it, or hear when it ends."""

    __slots__ = ("abort", "_callbacks")

    def __init__(self, abort: Callable[[], None]) -> None:
        self.abort = abort
        self._callbacks: list[Callable[[str], None]] = []

    def on_end(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once when the connection is lost (``"disconnect"``) or the server
        shuts down (``"shutdown"``)."""
        self._callbacks.append(callback)

    def discard(self, callback: Callable[[str], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def ended(self, reason: str) -> None:
        """Called by the protocol; runs and forgets every callback."""
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(reason)


def hooks_of(scope: Mapping[str, Any]) -> ConnectionHooks | None:
    """The request's hooks (``scope["extensions"][EXTENSION]["hooks"]``), when its server offers them."""
    extension = (scope.get("extensions") or {}).get(EXTENSION) or {}
    hooks = extension.get("hooks")
    return hooks if isinstance(hooks, ConnectionHooks) else None
