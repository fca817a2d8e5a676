"""Real processes for end-to-end tests: gateways and workers started as the CLI starts them.

Each process runs ``python -m gateway`` / ``python -m worker`` with its own environment and a
log file under the test's directory (shown when a test fails to start one); ``factory_cli.processes``
spawns, probes and stops them. A gateway is ready when ``/readyz`` answers, a worker when its
presence record is in Redis.
"""

import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from rq.job import Job

import gateway
import worker
from factory.deployments import Deployment
from factory.enqueue import enqueue
from factory.jobs import InvocationRequest, JobRecord, JobStatus, new_job_id, now_ms
from factory.registry import read_all
from factory.settings import Settings
from factory_cli import processes
from factory_cli.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
PREFAB_DIRS = [ROOT / "prefabs", ROOT / "tests" / "prefabs"]
# Prefab environments are cached by content: every test's processes share one cache, so an
# environment is built once per machine, not once per test.
ENV_DIR = Path(tempfile.gettempdir()) / f"prefab-factory-test-envs-{os.getuid()}"
READY_TIMEOUT_S = 60.0


@dataclass
class Proc(processes.Child):
    """A factory process of a test, with the waits and signals the tests use."""

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> None:
        """Wait until the process has logged ``text`` (an event seen from outside, not a guess of its time)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert time.monotonic() < deadline, f"{self.name} never logged {text!r}:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.send(signal.Signals(sig))

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then (after ``timeout_s``) SIGKILL to the process and every descendant seen."""
        return super().stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL the process and every descendant seen: its work horses and their runners too (each
        leads a process group of its own, so killing the worker's group would miss them)."""
        self.kill_tree()


@dataclass
class Gateway(Proc):
    url: str = ""


@dataclass
class Stack:
    """A set of factory processes sharing one Redis database."""

    redis_url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "FACTORY_PREFABS": os.pathsep.join(str(p) for p in PREFAB_DIRS),
                "FACTORY_STATE_DIR": str(self.workdir / "state"),
                "FACTORY_ENV_DIR": str(ENV_DIR),
                # Many tests start a gateway before (or without) workers: their calls wait in the queue.
                # The refusal of calls no worker serves is tested on its own (test_deployments.py).
                "FACTORY_QUEUE_WITHOUT_WORKER": "true",
                "FACTORY_LOG_JSON": "true",
                "FACTORY_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        env.update(extra)
        return env

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> processes.Child:
        return processes.spawn(
            name, [sys.executable, "-m", module], env, cwd=ROOT, log_path=self.workdir / f"{name}.log"
        )

    def start_gateway(self, **extra: str) -> Gateway:
        """A gateway on a free port, returned once its ``/readyz`` answers 200."""
        port = free_port()
        env = self._env({"FACTORY_HOST": "127.0.0.1", "FACTORY_PORT": str(port), **extra})
        child = self._spawn(f"gateway-{len(self.procs)}", gateway.__name__, env)
        started = Gateway(child.name, child.popen, child.log_path, url=f"http://127.0.0.1:{port}")
        self.procs.append(started)
        started.wait_ready(processes.http_ok(f"{started.url}/readyz"), READY_TIMEOUT_S)
        return started

    def start_worker(self, **extra: str) -> Proc:
        """A worker, returned once its presence record is in Redis (``factory.presence``)."""
        child = self._spawn(f"worker-{len(self.procs)}", worker.__name__, self._env(extra))
        started = Proc(child.name, child.popen, child.log_path)
        self.procs.append(started)
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            started.wait_ready(processes.worker_listed(client, started.pid), READY_TIMEOUT_S)
        finally:
            client.close()
        return started

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@dataclass(frozen=True)
class Received:
    seq: int
    event: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.event["type"])


def parse_frames(lines: Iterator[str]) -> Iterator[Received]:
    """Parse SSE lines into events (ignores comments and ``retry:``)."""
    seq: int | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                assert seq is not None, "every event carries an id"
                yield Received(seq, orjson.loads("\n".join(data)))
            seq, data = None, []
        elif line.startswith("id:"):
            seq = int(line[3:].strip())
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def read_events(
    url: str, *, last_event_id: int | None = None, limit: int | None = None, timeout_s: float = 30.0
) -> tuple[int, list[Received]]:
    """GET an events stream; returns its status and the events (stops after ``limit`` events)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events: list[Received] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout_s) as response:
        if response.status_code != 200:
            return response.status_code, events
        for received in parse_frames(response.iter_lines()):
            events.append(received)
            if limit is not None and len(events) >= limit:
                break
    return response.status_code, events


def invoke(gateway_url: str, function_name: str, inputs: dict[str, Any], **body: Any) -> str:
    response = httpx.post(
        f"{gateway_url}/invoke", json={"function_name": function_name, "inputs": inputs, **body}, timeout=10
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def wait_status(gateway_url: str, job_id: str, statuses: set[str], timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = httpx.get(f"{gateway_url}/jobs/{job_id}", timeout=5).json()
        if job.get("status") in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {job.get('status')}, wanted {statuses}")
        time.sleep(0.05)


def events_url(gateway: Gateway, job_id: str) -> str:
    return f"{gateway.url}/jobs/{job_id}/events"


def deployment_of(client: redis.Redis, prefab_id: str) -> Deployment:
    """The live deployment of a prefab (the folder prefabs are deployed when a gateway or worker starts)."""
    live = [d for d in read_all(client).values() if d.prefab_id == prefab_id and d.state.value != "retired"]
    assert live, f"{prefab_id} is not deployed"
    return live[0]


def enqueue_call(
    client: redis.Redis,
    settings: Settings,
    function_name: str,
    inputs: dict[str, Any],
    *,
    prefab_id: str = "behaviours",
    retries: int = 0,
    timeout_s: float = 10,
    rq_timeout_s: int | None = None,
) -> str:
    """A queued call as the gateway leaves it (record, RQ job on its prefab's queue, doorbell); its job id."""
    deployment = deployment_of(client, prefab_id)
    job_id = new_job_id()
    record = JobRecord(
        job_id=job_id, prefab_id=prefab_id, function_name=function_name, status=JobStatus.QUEUED, created_ms=now_ms()
    )
    request = InvocationRequest(
        job_id=job_id,
        prefab_id=prefab_id,
        function_name=function_name,
        version=deployment.version,
        deployment_id=deployment.deployment_id,
        inputs=inputs,
        timeout_s=timeout_s,
        retries=retries,
        created_ms=now_ms(),
    )
    enqueue(client, settings, record, request)
    if rq_timeout_s is not None:  # RQ's own deadline, shorter than the factory's margin gives it
        client.hset(Job.key_for(job_id), "timeout", rq_timeout_s)
    return job_id


parent_of = processes.parent_of


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail once ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (from /proc; a zombie has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def runner_pids(worker: Proc, match: str = "prefabs/behaviours") -> list[int]:
    """The worker's prefab runners whose command line holds ``match`` (a prefab folder's path, or an
    environment's interpreter), by their pids out here (inside their pid namespace they have others);
    bubblewrap's own processes are not runners."""
    found = []
    for pid in processes.descendants(worker.popen.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(command).decode(errors="replace")
        if "prefab_runner.py" in line and not command[0].endswith(b"bwrap") and match in line:
            found.append(pid)
    return found
