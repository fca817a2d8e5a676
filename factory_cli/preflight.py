"""Checks ``factory up`` makes before it starts anything: is the gateway's port free, is there a prefab to serve.

A taken port would otherwise show as the gateway failing five times and the factory stopping with
"exited with status 3"; an empty prefab folder would start a factory that can run nothing.
"""

import errno
import socket
from dataclasses import dataclass

from factory.catalog import Catalog
from factory.settings import Settings


@dataclass(frozen=True)
class Preflight:
    """What was found: the reason the port cannot be used (None: free) and the prefabs that load."""

    port_problem: str | None
    loaded: list[str]
    broken: list[str]


def port_problem(host: str, port: int) -> str | None:
    """Why the gateway could not listen on host:port, or None when it can (bound as uvicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is taken by another process (choose one with --port)"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def check(settings: Settings) -> Preflight:
    """Look at the port and the prefab folders, starting nothing."""
    catalog = Catalog.discover(settings.prefabs)
    return Preflight(
        port_problem=port_problem(settings.host, settings.port),
        loaded=[entry.manifest.id for entry in catalog.loaded() if entry.manifest is not None],
        broken=[str(entry.path) for entry in catalog.entries if not entry.ok],
    )
