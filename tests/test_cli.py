"""The `factory` CLI, the Python client and the supervisor, against real files, servers and processes.

The client and ``factory invoke`` talk to a small HTTP server on loopback that serves canned
jobs the way the gateway does (``id:``/``data:`` frames, ``Last-Event-ID``, 204 after the end)
and can break the first connection of a stream midway, to prove the client resumes by itself.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import typer
from typer.testing import CliRunner

from factory.settings import Settings, settings_env
from factory_cli.app import app
from factory_cli.jobs import parse_inputs
from factory_cli.processes import start_time
from factory_client.client import FactoryClient, FactoryClientError

ROOT = Path(__file__).resolve().parent.parent
WIDE = {"COLUMNS": "300"}  # rich tables must not wrap the messages the tests look for

runner = CliRunner()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The CLI configures the root logger, as a process would; give the next test the one it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --- validate and new ---------------------------------------------------------


def test_validate_repo_prefabs() -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "prefabs")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "streaming-examples" in result.output
    assert "OK" in result.output
    assert "BROKEN" not in result.output


def _write_prefab(folder: Path, streaming: bool, source: str) -> None:
    folder.mkdir(parents=True)
    manifest = {
        "id": folder.name,
        "version": "1.0.0",
        "functions": [
            {
                "name": "shout",
                "streaming": streaming,
                "parameters": [{"name": "text", "type": "string", "required": True}],
            }
        ],
    }
    (folder / "prefab-manifest.json").write_text(json.dumps(manifest))
    (folder / "src").mkdir()
    (folder / "src" / "main.py").write_text(source)


def test_validate_broken_prefab_exits_1_naming_the_reason(tmp_path: Path) -> None:
    _write_prefab(tmp_path / "liar", streaming=True, source="def shout(text: str) -> str:\n    return text.upper()\n")
    result = runner.invoke(app, ["validate", str(tmp_path)], env=WIDE)
    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output
    assert "streaming is true but it is not a generator function" in result.output


def test_validate_reports_every_prefab(tmp_path: Path) -> None:
    _write_prefab(tmp_path / "good", streaming=True, source="def shout(text):\n    yield text\n")
    _write_prefab(tmp_path / "bad", streaming=False, source="def shout(text):\n    yield text\n")
    result = runner.invoke(app, ["validate", str(tmp_path)], env=WIDE)
    assert result.exit_code == 1
    assert "OK" in result.output
    assert "it is a generator function but streaming is false" in result.output


def test_validate_without_prefabs_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path)], env=WIDE)
    assert result.exit_code == 1
    assert "no prefab found" in result.output


def test_new_creates_a_prefab_that_validates_and_passes_its_tests(tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", "text-tools", "--dir", str(tmp_path)], env=WIDE)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "text-tools"
    for name in ("prefab-manifest.json", "src/main.py", "tests/test_main.py", "pyproject.toml", "README.md"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "prefab-manifest.json").read_text())["id"] == "text-tools"

    validated = runner.invoke(app, ["validate", str(folder)], env=WIDE)
    assert validated.exit_code == 0, validated.output
    assert "stream_text" in validated.output

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout


def test_new_refuses_a_bad_or_taken_name(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["new", "no spaces!", "--dir", str(tmp_path)])
    assert bad.exit_code == 1
    assert "cannot name a prefab" in bad.output
    assert runner.invoke(app, ["new", "twice", "--dir", str(tmp_path)]).exit_code == 0
    again = runner.invoke(app, ["new", "twice", "--dir", str(tmp_path)])
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_worker_and_gateway_need_a_redis_url() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FACTORY_REDIS_URL")}
    for command in ("worker", "gateway"):
        result = subprocess.run(
            [sys.executable, "-m", "factory_cli", command], env=env, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, result.stderr
        assert "REDIS_URL is not set" in result.stderr


# --- inputs and settings --------------------------------------------------------


def test_parse_inputs_reads_values_as_json_when_they_parse() -> None:
    pairs = ["b=2", "c=hello", "d=[1, 2]", 'e="3"', "f=a=b", "g=true", "h="]
    assert parse_inputs('{"a": {"x": 1}, "b": "replaced"}', pairs) == {
        "a": {"x": 1},
        "b": 2,
        "c": "hello",
        "d": [1, 2],
        "e": "3",
        "f": "a=b",
        "g": True,
        "h": "",
    }


@pytest.mark.parametrize(("json_text", "pairs"), [("[1]", []), ("{", []), (None, ["novalue"]), (None, ["=1"])])
def test_parse_inputs_rejects_malformed(json_text: str | None, pairs: list[str]) -> None:
    with pytest.raises(typer.BadParameter):
        parse_inputs(json_text, pairs)


def test_settings_reach_a_child_process_unchanged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")  # a field read through an alias
    settings = Settings(
        redis_url="redis://127.0.0.1:1/2",
        prefabs=[tmp_path / "a", tmp_path / "b"],
        state_dir=tmp_path / "state",
        port=9123,
        api_keys=["k1", "k2"],
        log_json=False,
        shutdown_grace_s=1.5,
    )
    assert settings.s3_region == "eu-west-1"
    monkeypatch.delenv("AWS_REGION")
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env() == settings


# --- a canned gateway on loopback ---------------------------------------------------

JOBS: dict[str, list[dict[str, Any]]] = {
    "greet": [
        {"type": "start", "data": {"message": "greeting"}},
        {"type": "content", "data": "Hello, "},
        {"type": "progress", "data": {"current": 1, "total": 2, "percentage": 50}},
        {"type": "content", "data": "world"},
        {"type": "progress", "data": {"current": 2, "total": 2, "percentage": 100}},
        {"type": "done", "data": {"answer": 42}},
    ],
    "explode": [
        {"type": "start", "data": None},
        {"type": "error", "data": "boom", "error_code": "UNEXPECTED_ERROR"},
    ],
}


@dataclass
class StubState:
    drop_after: int | None = None  # the first events connection breaks after this many events
    chunked: bool = True  # break mid-chunk (a read error) rather than end the body early (a clean EOF)
    always_break: bool = False
    last_event_ids: list[str | None] = field(default_factory=list)  # header of each events request
    invoked: list[dict[str, Any]] = field(default_factory=list)


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: StubState) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.state = state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> StubState:
        return cast(StubServer, self.server).state

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, message: str) -> None:
        self._json(404, {"error": {"code": "NOT_FOUND", "message": message, "details": {"path": self.path}}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        name = body.get("function_name")
        if self.path != "/invoke" or name not in JOBS:
            self._not_found(f"no loaded prefab has a function {name!r}")
            return
        self.state.invoked.append(body)
        accepted = {
            "job_id": name,
            "status": "queued",
            "events_url": f"/jobs/{name}/events",
            "status_url": f"/jobs/{name}",
        }
        self._json(202, accepted)

    def do_GET(self) -> None:
        parts = self.path.partition("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "jobs" and parts[2] == "events" and parts[1] in JOBS:
            self._events(JOBS[parts[1]])
        else:
            self._not_found("no such job")

    def _events(self, events: list[dict[str, Any]]) -> None:
        state = self.state
        header = self.headers.get("Last-Event-ID")
        state.last_event_ids.append(header)
        start = int(header) if header else 0
        if start >= len(events):
            self.send_response(204)
            self.end_headers()
            return
        breaking = state.always_break or (len(state.last_event_ids) == 1 and state.drop_after is not None)
        limit = 0 if state.always_break else (state.drop_after or 0)
        chunked = breaking and state.chunked
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
        self.end_headers()
        self.close_connection = True
        frames = [b"retry: 10\n\n", b": keep-alive\n\n"]
        for seq, event in enumerate(events[start:], start + 1):
            if breaking and seq - start > limit:
                break
            frames.append(f"id: {seq}\ndata: {json.dumps(event)}\n\n".encode())
        for frame in frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame) if chunked else frame)
        if breaking:  # half a frame, then the connection goes away
            partial = b'id: 99\ndata: {"type": "cont'
            self.wfile.write(b"400\r\n" + partial if chunked else partial)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer(StubState())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- client --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [True, False], ids=["read-error", "early-eof"])
def test_events_resume_after_a_dropped_connection(stub: StubServer, chunked: bool) -> None:
    stub.state.drop_after = 3
    stub.state.chunked = chunked
    with FactoryClient(stub.url, trust_env=False) as client:
        events = list(client.events("greet"))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.event for e in events] == JOBS["greet"]
    assert events[-1].is_terminal
    assert stub.state.last_event_ids == [None, "3"]


def test_events_start_after_the_given_last_event_id(stub: StubServer) -> None:
    with FactoryClient(stub.url, trust_env=False) as client:
        events = list(client.events("greet", last_event_id=4))
    assert [(e.seq, e.type) for e in events] == [(5, "progress"), (6, "done")]
    assert stub.state.last_event_ids == ["4"]


def test_events_after_the_end_answer_204_and_stop(stub: StubServer) -> None:
    with FactoryClient(stub.url, trust_env=False) as client:
        assert list(client.events("greet", last_event_id=6)) == []


def test_events_give_up_after_bounded_reconnects(stub: StubServer) -> None:
    stub.state.always_break = True
    with FactoryClient(stub.url, trust_env=False, max_reconnects=2) as client:
        with pytest.raises(FactoryClientError) as caught:
            list(client.events("greet"))
    assert caught.value.code == "CONNECTION_ERROR"
    assert caught.value.status is None
    assert len(stub.state.last_event_ids) == 3


def test_api_errors_carry_status_code_message_and_details(stub: StubServer) -> None:
    with FactoryClient(stub.url, trust_env=False) as client:
        with pytest.raises(FactoryClientError) as caught:
            list(client.events("no-such-job"))
        with pytest.raises(FactoryClientError) as invoked:
            client.invoke("nothing", {})
    assert (caught.value.status, caught.value.code, caught.value.message) == (404, "NOT_FOUND", "no such job")
    assert caught.value.details == {"path": "/jobs/no-such-job/events"}
    assert invoked.value.code == "NOT_FOUND"


def test_unreachable_gateway_is_a_connection_error() -> None:
    with FactoryClient("http://127.0.0.1:9", trust_env=False, timeout_s=2) as client:
        with pytest.raises(FactoryClientError) as caught:
            client.job("x")
    assert caught.value.code == "CONNECTION_ERROR"


# --- factory invoke ---------------------------------------------------------------------------


def test_invoke_follows_the_stream_through_a_dropped_connection(stub: StubServer) -> None:
    stub.state.drop_after = 2
    result = runner.invoke(app, ["invoke", "greet", "-i", "n=3", "-i", "who=Ann", "--url", stub.url], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Hello, world" in result.stdout
    assert json.loads(result.stdout[result.stdout.index("{") :]) == {"answer": 42}
    assert "job greet queued" in result.stderr
    assert stub.state.invoked == [{"function_name": "greet", "inputs": {"n": 3, "who": "Ann"}}]
    assert stub.state.last_event_ids == [None, "2"]


def test_invoke_exits_1_on_an_error_event(stub: StubServer) -> None:
    result = runner.invoke(app, ["invoke", "explode", "--prefab", "p", "--url", stub.url], env=WIDE)
    assert result.exit_code == 1
    assert "UNEXPECTED_ERROR" in result.stderr
    assert "boom" in result.stderr
    assert stub.state.invoked == [{"function_name": "explode", "inputs": {}, "prefab_id": "p"}]


def test_invoke_of_an_unknown_function_exits_3(stub: StubServer) -> None:
    result = runner.invoke(app, ["invoke", "missing", "--url", stub.url], env=WIDE)
    assert result.exit_code == 3
    assert "NOT_FOUND" in result.stderr


# --- supervisor ---------------------------------------------------------------------------------

# Stands in for `python -m gateway` / `python -m worker`. The gateway one will not stop on SIGTERM and
# has a child in a process group of its own, as a worker's work horse has.
STAND_IN = """
import os, signal, subprocess, sys, time
from pathlib import Path

marks, role = Path(sys.argv[1]), sys.argv[2]
horse = ""
if role == "gateway":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = "import os, time; os.setpgrp(); time.sleep(600)"
    horse = str(subprocess.Popen([sys.executable, "-c", code]).pid)
(marks / f"{role}-{os.getpid()}").write_text(os.environ.get("REDIS_URL", "") + "\\n" + horse)
time.sleep(600)
"""

SUPERVISE = """
import sys
from pathlib import Path

from factory import logs
from factory.settings import Settings
from factory_cli.supervisor import Supervisor

marks, state, stand_in = sys.argv[1:4]
logs.configure("supervisor", "INFO", as_json=False)
settings = Settings(redis_url=None, state_dir=Path(state), workers=2, shutdown_grace_s=0.5, prefabs=[])
child = [sys.executable, stand_in, marks]
sys.exit(Supervisor(settings, gateway_command=[*child, "gateway"], worker_command=[*child, "worker"]).run())
"""


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    return start_time(pid) is not None


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.churn
def test_supervisor_restarts_a_dead_worker_and_stops_everything(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    log_path = tmp_path / "supervisor.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE, str(marks), str(tmp_path / "state"), str(stand_in)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: len(list(marks.iterdir())) == 3, 20, f"3 children; log:\n{log_path.read_text()}")
        redis_pid = int((tmp_path / "state" / "redis" / "redis.pid").read_text())
        first = {mark.name: mark.read_text().split("\n") for mark in marks.iterdir()}
        redis_url = next(iter(first.values()))[0]
        assert redis_url.startswith("redis://:") and "@127.0.0.1:" in redis_url  # the embedded Redis has a password
        assert redis.Redis.from_url(redis_url).ping()
        horse_pid = int(next(lines[1] for name, lines in first.items() if name.startswith("gateway")))

        dead_worker = int(min(name for name in first if name.startswith("worker")).split("-")[1])
        os.kill(dead_worker, signal.SIGKILL)
        _wait_for(lambda: len(list(marks.glob("worker-*"))) == 3, 20, "the worker's restart")
        assert "restarting" in log_path.read_text()

        children = [int(mark.name.split("-")[1]) for mark in marks.iterdir()]
        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(30) == 0, log_path.read_text()
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
    log_text = log_path.read_text()
    assert "did not stop within" in log_text  # the gateway stand-in ignored SIGTERM
    leftovers = [*children, horse_pid, redis_pid]
    _wait_for(lambda: not any(_running(pid) for pid in leftovers), 5, f"no process left; log:\n{log_text}")
