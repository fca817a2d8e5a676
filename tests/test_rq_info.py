"""What an operator sees with RQ's own tools: ``rq info`` (the installed CLI, run for real) shows the
factory's workers, busy or idle, and each queue's running, finished and failed jobs truthfully."""

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack, invoke, wait_status

QUEUE = "factory.behaviours"


def rq_info(redis_url: str) -> str:
    """``rq info`` in raw mode (one line per queue and per worker), as an operator would run it."""
    rq = Path(sys.executable).with_name("rq")
    done = subprocess.run([str(rq), "info", "--raw", "--url", redis_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for_info(redis_url: str, *expected: str, timeout_s: float = 30.0) -> str:
    """``rq info`` once it shows every line fragment in ``expected``."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = rq_info(redis_url)
        if all(fragment in shown for fragment in expected):
            return shown
        assert time.monotonic() < deadline, f"rq info never showed {expected}:\n{shown}"
        time.sleep(0.2)


def queue_counts(shown: str) -> dict[str, tuple[int, ...]]:
    """Each queue's waiting, executing, finished and failed jobs, as ``rq info --raw`` lists them."""
    found = re.findall(r"^queue (\S+) (\d+), (\d+) executing, (\d+) finished, (\d+) failed$", shown, re.M)
    return {name: tuple(int(n) for n in counts) for name, *counts in found}


def worker_line(shown: str, worker: str) -> tuple[str, int, int]:
    """A worker's state and its finished and failed jobs, as ``rq info --raw`` lists them."""
    found = re.findall(
        rf"^worker {re.escape(worker)} \(.*\) (\w+) (.*)\. jobs: (\d+) finished, (\d+) failed$", shown, re.M
    )
    assert len(found) == 1, shown
    state, queues, done, failed = found[0]
    assert QUEUE in queues.split(", ")
    return state, int(done), int(failed)


@pytest.mark.e2e
def test_rq_info_shows_the_workers_and_their_jobs(make_stack: Stack) -> None:
    url = make_stack.redis_url
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    finished = invoke(gateway.url, "counter", {"count": 1})
    worker = wait_status(gateway.url, finished, {"finished"})["worker"]
    failed = invoke(gateway.url, "raises", {"message": "boom"})
    assert wait_status(gateway.url, failed, {"finished", "failed"})["status"] == "failed"

    running = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    wait_status(gateway.url, running, {"started"})
    shown = wait_for_info(url, f"queue {QUEUE} 0, 1 executing, 1 finished, 1 failed", f"worker {worker} (")
    counts = queue_counts(shown)
    builds = counts["factory.deploy"][2]  # the deployments of the test prefabs, built by the worker
    assert builds >= 1 and sum(c[1] for c in counts.values()) == 1
    assert worker_line(shown, worker) == ("busy", 1 + builds, 1)

    assert httpx.post(f"{gateway.url}/jobs/{running}/cancel", timeout=10).json()["status"] == "canceled"
    shown = wait_for_info(
        url, f"queue {QUEUE} 0, 0 executing, 1 finished, 1 failed", f"{1 + builds} finished, 2 failed"
    )
    assert worker_line(shown, worker) == ("idle", 1 + builds, 2)  # RQ counts a canceled job as failed
