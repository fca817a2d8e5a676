"""The processes a run starts: one redis-server, and gateways, workers and baseline servers.

Everything runs on the loopback. Children are spawned and stopped by ``factory_cli.processes``
(sessions of their own; a stop kills a worker's work horses with it) with the bench's raised
open-file limit, and each writes its log under the run's work directory. A gateway is ready when
``/readyz`` answers, a worker when its presence record is in Redis, a plain RQ worker when RQ's
registry lists it. :class:`Cluster` remembers what it started and stops exactly that, newest first.
"""

import logging
import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rq.worker import Worker

import gateway
import worker
from factory_cli import processes
from factory_cli.embedded_redis import HOST, EmbeddedRedis, free_port

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BENCH_PREFABS = Path(__file__).resolve().parent / "prefabs"
READY_TIMEOUT_S = 60.0


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one (inherited by every child); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    """Resident set size of one process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its live descendants (each with the children it reaped):
    a worker with its long-lived work horse and runner, a Celery worker with its pool processes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if (fields := _stat(current)) is not None:
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            todo += children.get(current, [])
    return total


@dataclass
class Proc(processes.Child):
    """A process of the run, and the port it serves on (0 for none)."""

    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_s(self) -> float:
        """CPU seconds used so far by the process and its reaped children (a worker's work horses)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL to it and every descendant seen (its work horses too) if it will not go."""
        return super().stop(timeout_s)


@dataclass
class Cluster:
    """One run's Redis and the processes started against it."""

    workdir: Path
    redis: EmbeddedRedis | None = None
    procs: list[Proc] = field(default_factory=list)
    _next_db: int = 1

    def start_redis(self) -> None:
        # The factory's own persistence settings (AOF every second), as `factory up` runs it.
        self.redis = EmbeddedRedis(self.workdir / "redis-state", extra_config=["databases 64"])
        self.redis.start()

    def new_db(self) -> str:
        """A Redis URL on a database no earlier scenario used."""
        assert self.redis is not None
        db = self._next_db
        self._next_db += 1
        return f"redis://{HOST}:{self.redis.port}/{db}"

    def _env(self, redis_url: str, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_") and k != "REDIS_URL"}
        env.update(
            {
                "REDIS_URL": redis_url,
                "FACTORY_PREFABS": str(BENCH_PREFABS),
                "FACTORY_STATE_DIR": str(self.workdir / "state"),
                # Every connection of the bench comes from 127.0.0.1, as from a reverse proxy: no share per
                # address (its default, 2,000, refused the rest of 3,000 or 10,000 streams with a 503).
                "FACTORY_MAX_CONNECTIONS_PER_CLIENT": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], env: dict[str, str], port: int = 0) -> Proc:
        log_path = self.workdir / f"{name}-{len(self.procs)}.log"
        child = processes.spawn(name, [sys.executable, *args], env, cwd=ROOT, log_path=log_path)
        proc = Proc(name, child.popen, log_path, port=port)
        self.procs.append(proc)
        return proc

    def start_gateway(self, redis_url: str, **extra: str) -> Proc:
        port = free_port()
        env = self._env(redis_url, {"FACTORY_HOST": HOST, "FACTORY_PORT": str(port), **extra})
        proc = self.spawn("gateway", ["-m", gateway.__name__], env, port)
        wait_http(proc, "/readyz")
        return proc

    def start_workers(self, redis_url: str, count: int, **extra: str) -> list[Proc]:
        """Start ``count`` workers at once and return when each has its presence record in Redis."""
        procs = [self.spawn("worker", ["-m", worker.__name__], self._env(redis_url, extra)) for _ in range(count)]
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            for proc in procs:
                proc.wait_ready(processes.worker_listed(client, proc.pid), READY_TIMEOUT_S)
        finally:
            client.close()
        return procs

    def start_module(self, name: str, module: str, args: list[str], redis_url: str, *, port: int = 0) -> Proc:
        """A bench helper process (baseline server or worker) run as ``python -m module args``."""
        return self.spawn(name, ["-m", module, *args], self._env(redis_url, {}), port)

    def stop(self, procs: list[Proc]) -> None:
        for proc in reversed(procs):
            proc.stop()
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_all(self) -> None:
        self.stop(list(self.procs))
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def wait_http(proc: Proc, path: str) -> None:
    """Wait until ``GET path`` on the process answers 200."""
    proc.wait_ready(processes.http_ok(proc.url + path), READY_TIMEOUT_S)


def wait_log(proc: Proc, needle: str) -> None:
    """Wait until a third-party process (a Celery worker) has logged ``needle``: it offers no better probe here."""
    proc.wait_ready(lambda: needle in proc.log(), READY_TIMEOUT_S)


def rq_worker_listed(client: redis.Redis, pid: int) -> processes.Probe:
    """A probe: a plain RQ worker of that pid has registered itself (RQ's worker registry)."""

    def probe() -> bool:
        try:
            return any(registered.pid == pid for registered in Worker.all(connection=client))
        except (redis.RedisError, OSError):
            return False

    return probe
