"""A killed worker's workspaces do not wait for the retention: the sweeper of a gateway sharing the
state directory removes them within moments of the job ending, and a dead horse's spare with them.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from factory.retention import WORKSPACE_GRACE_S, sweep_workspaces
from tests.stack import Stack, invoke, read_events, wait_status
from tests.test_faults import FAST_LOSS, kill_machine

pytestmark = pytest.mark.churn


def test_a_dead_horses_spare_goes_and_a_live_ones_stays(tmp_path: Path, redis_url: str) -> None:
    work = tmp_path / "work"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead_spare, live_spare = work / f".spare-{int(gone.stdout)}", work / f".spare-{os.getpid()}"
    for path in (dead_spare, live_spare):
        (path / "data").mkdir(parents=True)
        os.utime(path, (time.time() - 2 * WORKSPACE_GRACE_S, time.time() - 2 * WORKSPACE_GRACE_S))
    assert sweep_workspaces(tmp_path, redis.Redis.from_url(redis_url), retention_s=86400) == 1
    assert [p.name for p in work.iterdir()] == [live_spare.name]


@pytest.mark.e2e
def test_a_killed_workers_workspace_is_swept_within_moments(make_stack: Stack) -> None:
    make_stack.env.update({**FAST_LOSS, "FACTORY_SWEEP_INTERVAL_S": "1"})
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    read_events(f"{gateway.url}/jobs/{job_id}/events", limit=3)
    work = make_stack.workdir / "state" / "work"
    assert (work / job_id).is_dir()
    kill_machine(worker)
    assert wait_status(gateway.url, job_id, {"failed"}, timeout_s=60)["error"]["code"] == "WORKER_LOST"
    deadline = time.monotonic() + WORKSPACE_GRACE_S + 60
    while left := sorted(p.name for p in work.iterdir()):
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.2)
