"""The work horse's prefab runners: one process per prefab version, started on first need.

A :class:`Runner` is ``worker/prefab_runner.py`` running under a deployment's own environment
(``<env>/bin/python -I``), so prefab code never runs in the worker's interpreter and neither
side's dependencies constrain the other's. The horse talks to it over a socket pair
(``multiprocessing.connection`` framing) and keeps everything else: Redis, deadlines, files.

The runner starts with an environment made by allowlist (no ``REDIS_URL``, no ``FACTORY_*``, no
cloud credentials: only what :func:`runner_environ` lets through; each job adds the secrets its
function declares), in a session of its own so the horse can kill it and whatever it spawned
without killing itself, and dies with the horse (``PR_SET_PDEATHSIG``). Where the machine allows,
it starts inside a bubblewrap sandbox (:attr:`RunnerSpec.sandbox`, made by ``worker.sandbox``)
and drops to its deployment's own uid. Its stdout and stderr (the prefab's ``print`` and
``logging``) are read by a thread and logged at INFO with the running job's id.

While a job runs, a :class:`_WorkspaceGuard` thread measures its workspace; past
``workspace_bytes`` the runner is killed and the job ends ``RESOURCE_EXHAUSTED`` (reported as the
runner's ``M`` message), as a ``MemoryError`` does.

:class:`RunnerPool` keeps the most recently used runners alive (``max_runners``); a runner that
died, hit its memory limit or was killed for a deadline or a cancel is replaced on next use. A
folder deployment (development) is restarted when a file under its ``src/`` changed, so an edit
applies to the next job.
"""

import logging
import os
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import orjson

logger = logging.getLogger(__name__)

RUNNER_PATH = Path(__file__).with_name("prefab_runner.py")
START_TIMEOUT_S = 120.0  # importing a prefab (heavy libraries) may take a while on a cold machine
GUARD_INTERVAL_S = 0.2  # how often a running job's workspace is measured
CODE_RECHECK_S = 1.0  # how often a folder deployment's runner looks whether its code changed (in development)
_JOB_ENDS = (b"F", b"R", b"N", b"X", b"M")  # the runner's messages that end a job
LOG_RECORD_MARK = "\x1eLOG "  # a stderr line that carries one of the prefab's logging records (prefab_runner)

# What a prefab's process may see of the worker's environment: nothing that opens the factory.
_PASSED_VARS = {"PATH", "LANG", "LANGUAGE", "TZ"}
_PASSED_VARS |= {"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"}  # CA certificates
_PASSED_PREFIXES = ("LC_",)
_PROXY_VARS = {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}
RUNNER_HOME = "/tmp"  # until a job gives it its workspace (inside the sandbox, a private tmpfs)


def runner_environ(environ: dict[str, str], python: Path, pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The environment a runner starts with: locale, time zone, certificates, proxies and the names an
    operator lists (``FACTORY_RUNNER_PASS_ENV``); its venv first on PATH, a HOME of its own."""
    extra = set(pass_env)
    env = {
        name: value
        for name, value in environ.items()
        if name in _PASSED_VARS or name.upper() in _PROXY_VARS or name.startswith(_PASSED_PREFIXES) or name in extra
    }
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["HOME"] = RUNNER_HOME
    return env


def _forward_record(raw: str, fields: dict[str, object]) -> None:
    """Log a record the prefab's ``logging`` made (sent as JSON after :data:`LOG_RECORD_MARK`)."""
    try:
        record = orjson.loads(raw)
        level = logging.getLevelName(str(record["level"]))
        logging.getLogger(str(record["logger"])).log(
            level if isinstance(level, int) else logging.WARNING, "%s", record["msg"], extra=fields
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        logging.getLogger("prefab").warning("%s", raw, extra={**fields, "stream": "stderr"})


class RunnerFailed(Exception):
    """The runner could not start: its prefab did not import (the reason verbatim), or it died first."""


class RunnerGone(Exception):
    """The runner died (killed, crashed, out of memory); ``description`` says how."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner is started for: one deployment's environment and code, and what confines it."""

    key: str  # the deployment id
    prefab_id: str
    python: Path
    code_dir: str  # a folder deployment's path ('' for an installed wheel)
    memory_bytes: int  # 0: no limit
    uid: int = -1  # as root: the uid it drops to; -1: keep the worker's
    gid: int = -1  # and its gid
    sandbox: tuple[str, ...] = ()  # the bubblewrap command it starts under (empty: none)
    unshare_net: bool = False  # it makes its own empty network namespace (root without bubblewrap)
    pid_namespace: bool = False  # bubblewrap gives it a pid namespace of its own
    max_processes: int = 0  # RLIMIT_NPROC of its uid (0: none)
    max_open_files: int = 0  # RLIMIT_NOFILE (0: inherited)
    max_file_bytes: int = 0  # RLIMIT_FSIZE (0: inherited)
    workspace_bytes: int = 0  # what a job's workspace may hold on disk (0: no limit)
    pass_env: tuple[str, ...] = ()  # worker variables it is given besides the allowlist

    def config(self) -> str:
        """The runner's JSON argument (read by ``worker/prefab_runner.py``)."""
        return orjson.dumps(
            {
                "memory_bytes": self.memory_bytes,
                "uid": self.uid,
                "gid": self.gid,
                "unshare_net": self.unshare_net,
                "pid_namespace": self.pid_namespace,
                "max_processes": self.max_processes,
                "max_open_files": self.max_open_files,
                "max_file_bytes": self.max_file_bytes,
                "code_dir": self.code_dir,
            }
        ).decode()


def _code_stamp(code_dir: str) -> float:
    """The newest modification time under a folder's ``src/`` (0 for an installed wheel)."""
    if not code_dir:
        return 0.0
    newest = 0.0
    for root, dirs, files in os.walk(Path(code_dir) / "src"):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
            except OSError:
                continue
    return newest


def describe_status(returncode: int | None, sandboxed: bool = False) -> str:
    if returncode is None:
        return "its exit was not seen"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    if sandboxed and returncode > 128:  # bubblewrap exits with 128 + the signal that killed the runner
        try:
            return f"killed by {signal.Signals(returncode - 128).name}"
        except ValueError:
            pass
    return f"exit status {returncode}"


class Runner:
    """The horse's handle on one runner process."""

    def __init__(self, spec: RunnerSpec, popen: subprocess.Popen[bytes], conn: Connection, stamp: float) -> None:
        self.spec = spec
        self.popen = popen
        self.conn = conn
        self.stamp = stamp
        self._stamp_checked_s = time.monotonic()
        self.job_fields: dict[str, object] = {}  # the running job's: its output's log lines carry them
        self.dead = False
        self.guard = _WorkspaceGuard(self, spec.workspace_bytes) if spec.workspace_bytes > 0 else None

    @classmethod
    def start(cls, spec: RunnerSpec, environ: dict[str, str]) -> "Runner":
        """Start the runner and wait until its prefab imported; :class:`RunnerFailed` with the reason if not."""
        ours, theirs = Pipe(duplex=True)
        # -I: isolated (no PYTHON* variables, no user site, not the current directory); -u: output
        # unbuffered, so a print is a log line at once; -B: no bytecode written beside the prefab.
        # -S: no site (nor an installed package's .pth file) until the runner has confined itself.
        args = [*spec.sandbox, str(spec.python), "-I", "-S", "-u", "-B", str(RUNNER_PATH), str(theirs.fileno())]
        args.append(spec.config())
        try:
            popen = subprocess.Popen(
                args,
                pass_fds=(theirs.fileno(),),
                env=runner_environ(environ, spec.python, spec.pass_env),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise RunnerFailed(f"cannot start {spec.python}: {exc}") from exc
        finally:
            theirs.close()
        runner = cls(spec, popen, ours, _code_stamp(spec.code_dir))
        assert popen.stdout is not None and popen.stderr is not None
        for stream in (popen.stdout, popen.stderr):
            threading.Thread(target=runner._log_output, args=(stream,), daemon=True, name="prefab-output").start()
        runner._wait_ready()
        return runner

    def _wait_ready(self) -> None:
        try:
            message = self.recv(START_TIMEOUT_S)
        except RunnerGone as gone:
            raise RunnerFailed(f"the prefab's process died while importing it ({gone.description})") from gone
        if message == b"Y":
            return
        self.kill()
        if message is None:
            raise RunnerFailed(f"the prefab did not import within {START_TIMEOUT_S:g} s")
        raise RunnerFailed(f"import failed: {message[1:].decode(errors='replace').strip()}")

    def _log_output(self, stream: IO[bytes]) -> None:
        """Each line the prefab writes becomes a log line of the running job: ``print`` at INFO
        (``stream: stdout``), other stderr at WARNING, and its ``logging`` records as they were."""
        name = "stdout" if stream is self.popen.stdout else "stderr"
        own = logging.getLogger(f"prefab.{self.spec.prefab_id}")
        with stream:  # closed at the runner's end, by the thread that reads it
            for line in stream:
                text = line.decode(errors="replace").rstrip()
                if not text:
                    continue
                if name == "stderr" and text.startswith(LOG_RECORD_MARK):
                    _forward_record(text[len(LOG_RECORD_MARK) :], self.job_fields)
                else:
                    level = logging.INFO if name == "stdout" else logging.WARNING
                    own.log(level, "%s", text, extra={**self.job_fields, "stream": name})

    def send(self, order: dict[str, Any]) -> None:
        try:
            self.conn.send_bytes(orjson.dumps(order))
        except OSError as exc:
            self.dead = True
            raise RunnerGone(self._ended()) from exc
        if self.guard is not None and order.get("op") == "run":
            self.guard.watch(Path(order["cwd"]))

    def recv(self, timeout_s: float) -> bytes | None:
        """The runner's next message, or None if none came within ``timeout_s``; :class:`RunnerGone` if it died."""
        try:
            if not self.conn.poll(timeout_s):
                return None
            message = self.conn.recv_bytes()
        except (EOFError, OSError) as exc:
            self.dead = True
            if self.guard is not None and self.guard.exceeded:  # killed for its workspace: not a crash
                self.guard.stop()
                return b"M" + self.guard.exceeded.encode()
            raise RunnerGone(self._ended()) from exc
        if self.guard is not None and message[:1] in _JOB_ENDS:
            self.guard.watch(None)
        return message

    def _ended(self) -> str:
        try:
            self.popen.wait(2)
        except subprocess.TimeoutExpired:
            self.kill()
        return describe_status(self.popen.returncode, bool(self.spec.sandbox))

    def kill(self) -> None:
        """SIGKILL the runner's session (it and whatever its prefab spawned) and collect it."""
        self.dead = True
        if self.guard is not None:
            self.guard.stop()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.conn.close()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            logger.error("prefab runner %d did not die", self.popen.pid)

    def current(self) -> bool:
        """Whether it can take another job: alive, and (in development) its code unchanged when last
        looked at, at most :data:`CODE_RECHECK_S` ago (the walk of its files stays off most jobs' start)."""
        if self.dead or self.popen.poll() is not None:
            return False
        now = time.monotonic()
        if not self.spec.code_dir or now - self._stamp_checked_s < CODE_RECHECK_S:
            return True
        self._stamp_checked_s = now
        return _code_stamp(self.spec.code_dir) == self.stamp


def workspace_usage(root: Path, stop_at: int) -> int:
    """Bytes ``root`` holds on disk (allocated blocks, links not followed), counting up to ``stop_at``."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
            if total > stop_at:
                return total
    return total


class _WorkspaceGuard:
    """Measures the running job's workspace every :data:`GUARD_INTERVAL_S`; kills the runner past its limit.

    The check is periodic, so a job may overshoot by what it writes in one interval (``RLIMIT_FSIZE``
    bounds each file meanwhile); the private ``/tmp`` is a size-limited tmpfs of its own. The guard
    ticks whether or not a job runs: a job's start and end only change what the next tick measures.
    """

    def __init__(self, runner: "Runner", limit_bytes: int) -> None:
        self.runner = runner
        self.limit_bytes = limit_bytes
        self.exceeded = ""  # why the runner was killed ('' : it was not)
        self._workspace: Path | None = None
        self._stopped = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, workspace: Path | None) -> None:
        """Measure ``workspace`` from the guard's next tick on (None: no job is running).

        Only the reference changes: the guard is not woken, so a job's start and end cost no
        thread switch (waking it sat on the path of every job's first event).
        """
        self._workspace = workspace
        if self._thread is None and workspace is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="workspace-guard")
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stopped:
                    self._cond.wait(GUARD_INTERVAL_S)
                if self._stopped:
                    return
            workspace = self._workspace
            if workspace is None:
                continue
            used = workspace_usage(workspace, self.limit_bytes)
            if used > self.limit_bytes:
                self.exceeded = (
                    f"the job's workspace passed its limit of {self.limit_bytes} bytes "
                    "(FACTORY_RUNNER_WORKSPACE_BYTES); its process was stopped"
                )
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.runner.popen.pid, signal.SIGKILL)
                return


class RunnerPool:
    """The live runners of one horse, most recently used last."""

    def __init__(self, max_runners: int, environ: dict[str, str]) -> None:
        self.max_runners = max_runners
        self.environ = environ
        self._runners: OrderedDict[str, Runner] = OrderedDict()

    def get(self, spec: RunnerSpec) -> Runner:
        """A live runner for ``spec``, started if there is none (:class:`RunnerFailed` if it cannot start)."""
        runner = self._runners.pop(spec.key, None)
        if runner is not None and not runner.current():
            runner.kill()
            runner = None
        if runner is None:
            while len(self._runners) >= self.max_runners:
                _, oldest = self._runners.popitem(last=False)
                oldest.kill()
            started = time.monotonic()
            runner = Runner.start(spec, self.environ)
            logger.info(
                "started prefab runner %d for %s in %.0f ms",
                runner.popen.pid,
                spec.key,
                (time.monotonic() - started) * 1000,
            )
        self._runners[spec.key] = runner
        return runner

    def discard(self, runner: Runner) -> None:
        """Kill a runner that must not run another job (deadline, cancel, memory, a broken exchange)."""
        runner.kill()
        if self._runners.get(runner.spec.key) is runner:
            del self._runners[runner.spec.key]

    def close(self) -> None:
        for runner in self._runners.values():
            runner.kill()
        self._runners.clear()
