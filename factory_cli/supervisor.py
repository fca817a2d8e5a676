"""The supervisor behind ``factory up``: Redis (embedded unless ``REDIS_URL`` is set), one gateway, N workers.

The gateway and workers run as processes (``python -m gateway``, ``python -m worker``), their
settings reaching them as environment variables (``settings_env``), with every path made absolute.
Their processes are spawned and stopped by ``factory_cli.processes``.

Each child runs in its own session: a Ctrl-C in the terminal reaches the supervisor only, which
then stops things in order (gateway and workers with SIGTERM, so a worker's graceful shutdown can finish
or hand back the running job, then Redis last). A second Ctrl-C skips the grace period. A child
still alive after ``shutdown_grace_s + 5`` s is killed with every descendant seen since its start,
which catches the workers' work horses (each in a process group of its own, out of reach of a
kill of the worker's group). A supervisor killed outright (``kill -9``) takes its children with it:
each is spawned tied to it and gets SIGTERM when the supervisor dies.

Once the gateway's ``/readyz`` answers and every worker's presence record is listed (the probes
of ``factory_cli.processes``), it logs that the factory is ready, once. A child that exits while
the factory is up is restarted with exponential backoff; a gateway
that keeps failing right after its start (a port already taken, a bad setting) stops the whole
factory instead of looping forever. An embedded Redis that dies is started again on its port.
"""

import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass
from types import FrameType

import redis

import gateway
import worker
from factory.presence import live_workers
from factory.settings import Settings, child_environ
from factory_cli import processes
from factory_cli.common import local_url
from factory_cli.embedded_redis import EmbeddedRedis, state_password

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
class Role:
    """One supervised role (the gateway, a worker) and its restart bookkeeping across its processes."""

    name: str
    command: list[str]
    env: dict[str, str]
    essential: bool = False
    child: processes.Child | None = None
    fast_failures: int = 0
    restart_at: float | None = None

    def start(self) -> None:
        self.child = processes.spawn(self.name, self.command, self.env, tied=True)
        self.restart_at = None

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.alive


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
        self.children: list[Role] = []
        self.redis: EmbeddedRedis | None = None
        # Plain flags, not threading.Event: a signal handler must never wait for a lock the main thread holds.
        self._stopping = False
        self._forced = False
        self._exit_code = 0
        self._probe_client: redis.Redis | None = None
        self._announced = False

    def run(self) -> int:
        """Start everything, supervise until told to stop, stop everything; the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            settings = self._start_redis()
            if not self._stopping:
                self._start_children(settings)
                logger.info("factory up: starting the gateway and %d workers (Ctrl-C to stop)", settings.workers)
                self._supervise(settings)
        finally:
            try:
                self._stop_children()
            finally:
                if self._probe_client is not None:
                    self._probe_client.close()
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
        self.children = [Role("gateway", self.gateway_command, env, essential=True)]
        self.children += [Role(f"worker-{n}", self.worker_command, env) for n in range(1, settings.workers + 1)]
        for child in self.children:
            child.start()
        self._probe_client = redis.Redis.from_url(settings.require_redis_url(), socket_timeout=2)

    def _announce_when_ready(self, settings: Settings) -> None:
        """Say once that the factory serves: its gateway's /readyz answers and every worker is listed."""
        assert self._probe_client is not None
        url = local_url(settings)
        if not processes.http_ok(f"{url}/readyz")():
            return
        try:
            here = socket.gethostname()
            listed = {worker.pid for worker in live_workers(self._probe_client) if worker.host == here}
        except (redis.RedisError, OSError):
            return
        workers = [role.child for role in self.children if not role.essential]
        if all(child is not None and child.pid in listed for child in workers):
            logger.info("factory up: ready on %s with %d workers", url, len(workers))
            self._announced = True

    def _supervise(self, settings: Settings) -> None:
        while not self._stopping:
            time.sleep(_TICK_S)
            self._check_redis()
            if not self._announced:
                self._announce_when_ready(settings)
            now = time.monotonic()
            for child in self.children:
                if self._stopping:
                    return
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.start()
                elif not child.alive:
                    self._schedule_restart(child, now)

    def _schedule_restart(self, child: Role, now: float) -> None:
        assert child.child is not None
        ran_s = now - child.child.started_at
        child.fast_failures = child.fast_failures + 1 if ran_s < STABLE_AFTER_S else 0
        status = child.child.popen.returncode
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
            child.child.pid,
            status,
            ran_s,
            delay_s,
        )
        child.restart_at = now + delay_s

    def _stop_children(self) -> None:
        running = [role.child for role in self.children if role.child is not None and role.alive]
        grace_s = self.settings.shutdown_grace_s + KILL_MARGIN_S
        if running:
            logger.info("waiting up to %.0f s for %d processes to stop", grace_s, len(running))
        processes.stop_all(running, grace_s, forced=lambda: self._forced)
        for child in running:
            logger.info("%s stopped (status %s)", child.name, child.popen.returncode)
