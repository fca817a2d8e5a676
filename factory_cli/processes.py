"""Child processes of the factory's tools: spawn one, wait until a probe says it serves, stop it and its tree.

The one owner of process handling for ``factory up`` (``factory_cli.supervisor``), the end-to-end
tests (``tests/stack.py``) and the bench (``bench/procs.py``). Its invariants:

- Each child leads a session of its own, so a Ctrl-C in a terminal reaches only the parent; it can
  also be tied to the parent's life (``tied=True``, see ``factory_cli.orphans``).
- Readiness is a probe: a callable that answers True once the child serves (a gateway's
  ``/readyz``, a worker's presence record in Redis: :func:`worker_listed`), never a line of its log.
- :meth:`Child.stop` sends SIGTERM, waits the grace period, then SIGKILLs the child and every
  descendant seen since it was spawned, each only while it still has the start time it was seen
  with (a pid reused by an unrelated process is left alone). A process group would not do: every
  work horse leads a group of its own (``worker.horse``) and its runner a session of its own, so
  killing a worker's group misses them; once the worker is gone they are no longer its descendants
  either, which is why descendants are remembered while the child lives.

Descendants and start times come from ``/proc/<pid>/stat`` (Linux); where there is no ``/proc``
only the child itself is killed.
"""

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from factory.presence import live_workers
from factory_cli.orphans import die_with_parent

logger = logging.getLogger(__name__)

POLL_S = 0.05
LOG_TAIL_CHARS = 3000

Probe = Callable[[], bool]


class NotReady(RuntimeError):
    """A child exited, or its probe never answered True, before the deadline."""


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of a live process; None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime(22nd)": comm may hold spaces and ")", so split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) <= 19 or fields[0] == "Z":  # a zombie has exited: nothing left to kill
        return None
    return int(fields[1]), int(fields[19])


def parent_of(pid: int) -> int | None:
    """The parent of a live process; None once it is gone."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[0]


def start_time(pid: int) -> int | None:
    """When a live process started (clock ticks since boot); None once it is gone."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid`` with its start time (empty where there is no ``/proc``)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started
                todo.append(child)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_if_same(pid: int, started: int) -> None:
    """SIGKILL ``pid`` unless it has exited and its number now belongs to another process."""
    if start_time(pid) == started:
        _signal(pid, signal.SIGKILL)


@dataclass
class Child:
    """One spawned process, the descendants seen under it, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    started_at: float = field(default_factory=time.monotonic)
    seen: dict[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """What the child wrote so far (empty when its output is not captured to a file)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def note_descendants(self) -> None:
        """Remember the child's descendants now: once it dies they are reparented and lost from view."""
        if self.alive:
            self.seen.update(descendants(self.pid))

    def send(self, sig: signal.Signals) -> None:
        """Send a signal to the child alone (nothing once it has been reaped)."""
        if self.alive:
            _signal(self.pid, sig)

    def wait_ready(self, probe: Probe, timeout_s: float, interval_s: float = POLL_S) -> None:
        """Return once ``probe()`` is True; :class:`NotReady` if the child exits or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive:
                raise NotReady(f"{self.name} exited with status {self.popen.returncode}:\n{self.log_tail()}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise NotReady(f"{self.name} was not ready within {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(interval_s)

    def log_tail(self) -> str:
        return self.log()[-LOG_TAIL_CHARS:] or "(no log)"

    def terminate(self) -> None:
        """SIGTERM, after noting the descendants the child has now."""
        self.note_descendants()
        self.send(signal.SIGTERM)

    def kill_tree(self) -> None:
        """SIGKILL the child if it still runs and every descendant seen that is still the same process; reap it."""
        if self.alive:  # not reaped, so its pid cannot have been reused
            self.note_descendants()
            _signal(self.pid, signal.SIGKILL)
        for pid, started in self.seen.items():
            kill_if_same(pid, started)
        self.popen.wait()

    def stop(self, grace_s: float) -> int:
        """SIGTERM, up to ``grace_s`` to exit, then :meth:`kill_tree`; the exit status."""
        stop_all([self], grace_s)
        return self.popen.returncode


def spawn(
    name: str,
    command: Sequence[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    log_path: Path | None = None,
    tied: bool = False,
) -> Child:
    """Start ``command`` in a session of its own, its output appended to ``log_path`` (else inherited).

    ``tied``: the child gets SIGTERM when this process dies, even SIGKILLed (``factory_cli.orphans``).
    """
    log = log_path.open("ab") if log_path is not None else None
    try:
        popen = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
            preexec_fn=die_with_parent() if tied else None,
        )
    finally:
        if log is not None:
            log.close()  # the child has its own copy
    logger.info("started %s (pid %d)", name, popen.pid)
    return Child(name, popen, log_path)


def stop_all(children: Sequence[Child], grace_s: float, forced: Callable[[], bool] = lambda: False) -> None:
    """SIGTERM every child at once, wait up to ``grace_s`` (or until ``forced()``), then kill what is left.

    Every child's tree is killed at the end, even a child that exited in time: a horse its worker
    left behind is killed with it.
    """
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    while any(child.alive for child in children) and time.monotonic() < deadline and not forced():
        for child in children:
            child.note_descendants()
        time.sleep(POLL_S)
    for child in children:
        if child.alive:
            logger.warning("%s (pid %d) did not stop within %.0f s; killing it", child.name, child.pid, grace_s)
        child.kill_tree()


def http_ok(url: str, timeout_s: float = 1.0) -> Probe:
    """A probe: ``GET url`` answers 200 (a gateway's ``/readyz``)."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=timeout_s).status_code == 200
        except httpx.TransportError:
            return False

    return probe


def worker_listed(client: redis.Redis, pid: int, host: str | None = None) -> Probe:
    """A probe: the worker process ``pid`` on ``host`` (this one by default) has a live presence record.

    A worker writes the record (``keys.worker_key``, lapsing after three heartbeats) once it has
    connected, deployed its prefab folders and loaded its queues; a record whose worker stops
    beating lapses, so the probe also says the worker is still alive.
    """
    host = host or socket.gethostname()

    def probe() -> bool:
        try:
            return any(worker.pid == pid and worker.host == host for worker in live_workers(client))
        except (redis.RedisError, OSError):
            return False

    return probe
