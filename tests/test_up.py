"""``factory up``, as a user runs it: a private Redis, the gateway and workers in one command;
SIGTERM stops every one of them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from factory_cli.embedded_redis import free_port
from factory_cli.processes import descendants, start_time
from tests.stack import ROOT, parse_frames

pytestmark = [pytest.mark.e2e, pytest.mark.churn]


def family_of(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    return set(descendants(pid))


def alive(pid: int) -> bool:
    return start_time(pid) is not None  # None once gone or a zombie


def workers_listed(url: str) -> int:
    """How many workers have a live presence record, as the gateway's ``/stats`` reads them."""
    try:
        response = httpx.get(f"{url}/stats", timeout=5)
    except httpx.TransportError:
        return 0
    return len(response.json()["workers"]) if response.status_code == 200 else 0


def test_up_runs_everything_and_sigterm_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_") and k != "REDIS_URL"}
    command = [sys.executable, "-m", "factory_cli", "up", "--port", str(port), "--workers", "2"]
    command += ["--state-dir", str(tmp_path / "state"), "--prefabs", str(ROOT / "prefabs")]
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        with httpx.stream(
            "POST", f"{url}/invoke/my_stream_function", json={"inputs": {"param": "up"}}, timeout=60
        ) as response:
            events = list(parse_frames(response.iter_lines()))
        assert [e.type for e in events] == ["start"] + ["progress"] * 5 + ["done"]
        # The CLI finds this factory's gateway from the state folder alone (no --url, no port).
        record = json.loads((tmp_path / "state" / "gateway.json").read_text())
        assert record["url"] == url
        cli_env = {**env, "FACTORY_STATE_DIR": str(tmp_path / "state")}
        invoked = subprocess.run(
            [sys.executable, "-m", "factory_cli", "invoke", "word_count", "-i", "text=up up down"],
            cwd=tmp_path,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert invoked.returncode == 0, invoked.stderr
        assert json.loads(invoked.stdout)["top"][0] == ["up", 2]
        assert (tmp_path / "state" / "redis").is_dir()  # the embedded Redis persists there
        family = family_of(up.pid)
        assert len(family) >= 4  # redis-server, the gateway, two workers (and their horses)
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0, (tmp_path / "up.log").read_text()
        deadline = time.monotonic() + 30
        while [pid for pid in family if alive(pid)]:
            assert time.monotonic() < deadline, [pid for pid in family if alive(pid)]
            time.sleep(0.05)
        assert not (tmp_path / "state" / "gateway.json").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def test_kill_9_of_up_leaves_nothing_running(tmp_path: Path) -> None:
    """The supervisor killed outright runs no cleanup: its children must go by themselves."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_") and k != "REDIS_URL"}
    command = [sys.executable, "-m", "factory_cli", "up", "--port", str(port), "--workers", "2"]
    command += ["--state-dir", str(tmp_path / "state"), "--prefabs", str(ROOT / "prefabs")]
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while True:  # ready, and every child started: redis-server, the gateway, two workers
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                ready = False
            family = family_of(up.pid)
            if ready and len(family) >= 4 and workers_listed(f"http://127.0.0.1:{port}") == 2:
                break
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        # Once its probes pass, the supervisor says so (once).
        while f"factory up: ready on http://127.0.0.1:{port} with 2 workers" not in (tmp_path / "up.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        family = family_of(up.pid)
        up.kill()
        up.wait(10)
        deadline = time.monotonic() + 60
        while survivors := [pid for pid in family if alive(pid)]:
            assert time.monotonic() < deadline, f"still running after kill -9 of factory up: {survivors}"
            time.sleep(0.1)
    finally:
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
