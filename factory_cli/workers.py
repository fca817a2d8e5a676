"""``factory workers``: the live workers, read from their presence records in Redis; a readiness probe.

A worker's presence record (``factory.presence``, key ``keys.worker_key(name)``, lapsing after three
heartbeats) is its readiness and its liveness: it is first written once the worker is connected
and serving, and lapses when the worker stops beating. This command reads Redis directly, so it
answers where no gateway runs (a worker container's health check: ``factory workers --local``),
and exits 4 when no live worker matches, after waiting ``--wait`` seconds for one.
"""

import socket
import time
from datetime import UTC, datetime
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from factory.presence import WorkerPresence, live_workers
from factory_cli.common import ExitCode, settings_from, stderr

POLL_S = 0.2


def _matching(client: redis.Redis, pid: int | None, local: bool) -> list[WorkerPresence]:
    found = live_workers(client)
    if pid is not None or local:
        here = socket.gethostname()
        found = [w for w in found if w.host == here and (pid is None or w.pid == pid)]
    return found


def _table(found: list[WorkerPresence]) -> Table:
    table = Table(title="live workers")
    for column in ("name", "host", "pid", "serves", "last beat", "rss MiB"):
        table.add_column(column, overflow="fold")
    for worker in found:
        beat = datetime.fromtimestamp(worker.beat_ms / 1000, UTC).isoformat(timespec="seconds")
        serves = "all" if worker.serves_all else ", ".join(worker.prefabs)
        row = (worker.name, worker.host, str(worker.pid), serves, beat, f"{worker.rss_bytes / 2**20:.0f}")
        table.add_row(*(escape(cell) for cell in row))
    return table


def workers(
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Redis to read [env REDIS_URL].")] = None,
    pid: Annotated[int | None, typer.Option(help="Only the worker of this process id on this machine.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Only the workers on this machine (its host name).")] = False,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for a matching worker to be listed.")] = 0.0,
) -> None:
    """List the live workers (their presence records in Redis); exit 4 when none matches: a readiness probe."""
    settings = settings_from(redis_url=redis_url)
    if not settings.redis_url:
        stderr().print("[red]REDIS_URL is not set[/red] (give --redis-url)")
        raise typer.Exit(ExitCode.USAGE)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                found = _matching(client, pid, local)
            except (redis.RedisError, OSError) as exc:
                if time.monotonic() >= deadline:
                    stderr().print(f"[red]cannot read Redis:[/red] {escape(str(exc))}")
                    raise typer.Exit(ExitCode.UNAVAILABLE) from exc
                found = []
            if found or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
    finally:
        client.close()
    if not found:
        where = f" with pid {pid} on this machine" if pid is not None else " on this machine" if local else ""
        stderr().print(f"no live worker{where}")
        raise typer.Exit(ExitCode.UNAVAILABLE)
    Console().print(_table(found))
