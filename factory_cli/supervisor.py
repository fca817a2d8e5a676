"""The supervisor behind ``factory up``: Redis (embedded unless ``REDIS_URL`` is set), one gateway, N workers.

The gateway and workers run as processes (``python -m gateway``, ``python -m worker``), their
settings reaching them as environment variables (``settings_env``), with every path made absolute.

Each child runs in its own session: a Ctrl-C in the terminal reaches the supervisor only, which
then stops things in order (gateway and workers with SIGTERM, so a worker's graceful shutdown can finish
or hand back the running job, then Redis last). A second Ctrl-C skips the grace period. A child
still alive after ``shutdown_grace_s + 5`` s is killed with its process group and every
descendant seen, which catches the workers' work horses (each in a process group of its own).
A supervisor killed outright (``kill -9``) takes its children with it: each is started with
``factory_cli.orphans.die_with_parent`` and gets SIGTERM when the supervisor dies.

A child that exits while the factory is up is restarted with exponential backoff; a gateway
that keeps failing right after its start (a port already taken, a bad setting) stops the whole
factory instead of looping forever. An embedded Redis that dies is started again on its port.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import gateway
import worker
from factory.settings import Settings, child_environ
from factory_cli.embedded_redis import EmbeddedRedis, state_password
from factory_cli.orphans import die_with_parent

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KILL_MARGIN_S = 5.0
# A child that ran at least this long before exiting counts as healthy: its next restart is immediate.
STABLE_AFTER_S = 10.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
GATEWAY_MAX_FAST_FAILURES = 5
_TICK_S = 0.1


@dataclass
class Child:
    """One supervised process and its restart bookkeeping."""

    name: str
    command: list[str]
    env: dict[str, str]
    essential: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    fast_failures: int = 0
    restart_at: float | None = None
    known_descendants: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # a SIGKILLed supervisor leaves no child running
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        logger.info("started %s (pid %d)", self.name, self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime(22nd)": comm may hold spaces and ")", so split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[1]), int(fields[19])) if len(fields) > 19 else None


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid`` with its start time (from /proc; empty where there is none)."""
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


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_if_same(pid: int, started: int) -> None:
    """SIGKILL ``pid`` unless it has exited and its number now belongs to another process."""
    stat = _proc_stat(pid)
    if stat is not None and stat[1] == started:
        _signal_pid(pid, signal.SIGKILL)


def _backoff_s(fast_failures: int) -> float:
    return 0.0 if fast_failures == 0 else min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (fast_failures - 1))


class Supervisor:
    """Runs the factory's processes until a stop signal, then stops them all."""

    def __init__(
        self,
        settings: Settings,
        *,
        gateway_command: list[str] | None = None,
        worker_command: list[str] | None = None,
    ) -> None:
        self.settings = settings.model_copy(
            update={
                "prefabs": [path.resolve() for path in settings.prefabs],
                "state_dir": settings.state_dir.resolve(),
            }
        )
        self.gateway_command = gateway_command or [sys.executable, "-m", gateway.__name__]
        self.worker_command = worker_command or [sys.executable, "-m", worker.__name__]
        self.children: list[Child] = []
        self.redis: EmbeddedRedis | None = None
        # Plain flags, not threading.Event: a signal handler must never wait for a lock the main thread holds.
        self._stopping = False
        self._forced = False
        self._exit_code = 0

    def run(self) -> int:
        """Start everything, supervise until told to stop, stop everything; the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            settings = self._start_redis()
            if not self._stopping:
                self._start_children(settings)
                logger.info(
                    "factory up: http://%s:%d with %d workers (Ctrl-C to stop)",
                    settings.host,
                    settings.port,
                    settings.workers,
                )
                self._supervise()
        finally:
            try:
                self._stop_children()
            finally:
                if self.redis is not None:
                    self.redis.stop()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return self._exit_code

    def request_stop(self, force: bool = False) -> None:
        """Ask :meth:`run` to stop (what a signal does); ``force`` skips the grace period."""
        self._forced = self._forced or force
        self._stopping = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            logger.warning("%s again: killing the factory's processes now", name)
            self.request_stop(force=True)
        else:
            logger.info("%s: stopping the factory (again to force)", name)
            self.request_stop()

    def _start_redis(self) -> Settings:
        if self.settings.redis_url is not None:
            logger.info("using external Redis %s", self.settings.redis_url.rpartition("@")[2])
            return self.settings
        self.redis = EmbeddedRedis(self.settings.state_dir, password=state_password(self.settings.state_dir)).start()
        return self.settings.model_copy(update={"redis_url": self.redis.url})

    def _check_redis(self) -> None:
        """Start the embedded Redis again, on the same port, if it died under the factory."""
        if self.redis is None or self.redis.running:
            return
        port = self.redis.port
        logger.error("embedded redis-server exited unexpectedly; starting it again on port %d", port)
        self.redis.stop()
        password = state_password(self.settings.state_dir)
        self.redis = EmbeddedRedis(self.settings.state_dir, port, password=password).start()

    def _start_children(self, settings: Settings) -> None:
        env = child_environ(settings)
        self.children = [Child("gateway", self.gateway_command, env, essential=True)]
        self.children += [Child(f"worker-{n}", self.worker_command, env) for n in range(1, settings.workers + 1)]
        for child in self.children:
            child.start()

    def _supervise(self) -> None:
        while not self._stopping:
            time.sleep(_TICK_S)
            self._check_redis()
            now = time.monotonic()
            for child in self.children:
                if self._stopping:
                    return
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.start()
                elif not child.alive:
                    self._schedule_restart(child, now)

    def _schedule_restart(self, child: Child, now: float) -> None:
        assert child.process is not None
        ran_s = now - child.started_at
        child.fast_failures = child.fast_failures + 1 if ran_s < STABLE_AFTER_S else 0
        status = child.process.returncode
        if child.essential and child.fast_failures >= GATEWAY_MAX_FAST_FAILURES:
            logger.error(
                "%s exited with status %s %d times in a row right after starting; stopping the factory",
                child.name,
                status,
                child.fast_failures,
            )
            self._exit_code = 1
            self.request_stop()
            return
        delay_s = _backoff_s(child.fast_failures)
        logger.warning(
            "%s (pid %d) exited unexpectedly with status %s after %.1f s; restarting in %.1f s",
            child.name,
            child.process.pid,
            status,
            ran_s,
            delay_s,
        )
        child.restart_at = now + delay_s

    def _stop_children(self) -> None:
        running = [child for child in self.children if child.alive]
        for child in running:
            assert child.process is not None
            child.known_descendants = descendants(child.process.pid)
            _signal_pid(child.process.pid, signal.SIGTERM)
        grace_s = self.settings.shutdown_grace_s + KILL_MARGIN_S
        if running:
            logger.info("waiting up to %.0f s for %d processes to stop", grace_s, len(running))
        deadline = time.monotonic() + grace_s
        while any(child.alive for child in running) and time.monotonic() < deadline and not self._forced:
            for child in running:
                if child.alive and child.process is not None:
                    child.known_descendants.update(descendants(child.process.pid))
            time.sleep(_TICK_S)
        for child in running:
            self._kill_leftovers(child)

    def _kill_leftovers(self, child: Child) -> None:
        """SIGKILL the child if alive, its process group and every descendant seen; reap it."""
        process = child.process
        assert process is not None
        if process.poll() is None:  # not reaped, so its pid and process group cannot have been reused
            logger.warning("%s (pid %d) did not stop in time; killing it", child.name, process.pid)
            child.known_descendants.update(descendants(process.pid))
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid, started in child.known_descendants.items():
            _kill_if_same(pid, started)
        process.wait()
        logger.info("%s stopped (status %s)", child.name, process.returncode)
