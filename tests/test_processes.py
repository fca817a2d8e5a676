"""The process manager (``factory_cli.processes``): readiness by probe, stop with grace, then a kill of
the whole tree that spares a reused pid; and a worker's readiness as its presence record in Redis."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from factory_cli import processes
from tests.stack import Stack

pytestmark = pytest.mark.churn

# A parent that starts a child leading a process group of its own (as a worker starts a work horse),
# writes the child's pid, then sleeps; it ignores SIGTERM when told to.
PARENT = """
import os, signal, subprocess, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
horse = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(horse.pid))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def _spawn_parent(tmp_path: Path, mode: str) -> tuple[processes.Child, int]:
    mark = tmp_path / "horse.pid"
    child = processes.spawn(
        "parent", [sys.executable, "-c", PARENT, str(mark), mode], dict(os.environ), log_path=tmp_path / "parent.log"
    )
    child.wait_ready(mark.exists, timeout_s=30)
    return child, int(mark.read_text())


def _gone(pid: int) -> bool:
    return processes.start_time(pid) is None


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["stubborn", "obedient"])
def test_stop_kills_a_descendant_in_its_own_process_group(tmp_path: Path, mode: str) -> None:
    """Stubborn: the parent ignores SIGTERM and is killed after the grace. Obedient: it exits at once,
    leaving its child reparented, no longer its descendant; the child was seen, so it is killed too."""
    parent, horse = _spawn_parent(tmp_path, mode)
    try:
        assert os.getpgid(horse) == horse != os.getpgid(parent.pid)  # a group kill of the parent would miss it
        status = parent.stop(grace_s=0.5 if mode == "stubborn" else 30)
        assert status == (-9 if mode == "stubborn" else -15)
        _wait_gone(horse)
    finally:
        parent.kill_tree()
        if not _gone(horse):
            os.kill(horse, 9)


def test_a_pid_seen_with_another_start_time_is_not_killed(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = processes.start_time(sleeper.pid)
        assert started is not None
        processes.kill_if_same(sleeper.pid, started + 1)  # as if the pid now belonged to another process
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(0.5)
        processes.kill_if_same(sleeper.pid, started)
        assert sleeper.wait(10) == -9
    finally:
        sleeper.kill()
        sleeper.wait()


def test_wait_ready_reports_a_child_that_exits(tmp_path: Path) -> None:
    child = processes.spawn(
        "doomed",
        [sys.executable, "-c", "print('bad setting'); raise SystemExit(3)"],
        dict(os.environ),
        log_path=tmp_path / "doomed.log",
    )
    with pytest.raises(processes.NotReady, match="(?s)exited with status 3.*bad setting"):
        child.wait_ready(lambda: False, timeout_s=60)


def test_wait_ready_gives_up_at_its_deadline(tmp_path: Path) -> None:
    child = processes.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], dict(os.environ))
    try:
        with pytest.raises(processes.NotReady, match="not ready within 0.2 s"):
            child.wait_ready(lambda: False, timeout_s=0.2)
    finally:
        assert child.stop(grace_s=10) == -15


@pytest.mark.e2e
def test_worker_readiness_is_its_presence_record(make_stack: Stack, redis_url: str) -> None:
    """Listed once started (start_worker waits on it), unlisted after a clean stop; the command says so too."""
    worker = make_stack.start_worker()
    client = redis.Redis.from_url(redis_url)
    listed = processes.worker_listed(client, worker.pid)
    env = {**os.environ, "REDIS_URL": redis_url}
    command = [sys.executable, "-m", "factory_cli", "workers", "--pid", str(worker.pid)]
    try:
        assert listed()
        shown = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert str(worker.pid) in shown.stdout
        assert worker.stop() == 0
        assert not listed()
        gone = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert gone.returncode == 4
        assert f"no live worker with pid {worker.pid}" in gone.stderr
    finally:
        client.close()
