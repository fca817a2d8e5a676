"""No Redis key outlives its job: every path a job can take leaves keys with a TTL (or none), and the
database shrinks back to what it held before the jobs once their retention has passed.
"""

import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.stack import Stack, invoke, read_events, wait_status
from tests.test_faults import FAST_LOSS, kill_machine

pytestmark = pytest.mark.churn

# Shared keys with a constant name that RQ or the factory may keep while idle (none is per job).
# Factory-wide keys, not any job's: RQ's queue set, the job statistics (counters that outlive every
# process, by design), and the lost-job reaper's lock (re-taken every heartbeat while a process runs).
CONSTANT_KEYS = {
    b"rq:queues",
    b"factory:stats:outcomes",
    b"factory:stats:durations",
    b"factory:stats:first-event",
    b"factory:reaper-lock",
}


# RQ's view of the jobs and workers (``factory.store.rqview``): none of these is kept without an end.
RQ_VIEW = (b"rq:wip:", b"rq:finished:", b"rq:failed:", b"rq:canceled:", b"rq:worker:", b"rq:workers")


def gateway_cancel(url: str, job_id: str) -> str:
    return str(httpx.post(f"{url}/jobs/{job_id}/cancel", timeout=10).json()["status"])


def keys_with_ttl(client: redis.Redis) -> dict[bytes, int]:
    return {key: int(client.ttl(key)) for key in client.scan_iter(count=1000)}


@pytest.mark.e2e
def test_every_job_key_expires_on_every_path(make_stack: Stack, tmp_path: Path) -> None:
    # "flaky" counts attempts in a file of the test's, out of any sandbox's reach (docs/security.md).
    make_stack.env.update({**FAST_LOSS, "FACTORY_RETENTION_S": "4", "FACTORY_SANDBOX": "off"})
    client = redis.Redis.from_url(make_stack.redis_url)
    gateway = make_stack.start_gateway()
    baseline = set(keys_with_ttl(client))
    jobs: list[str] = []

    canceled_queued = invoke(gateway.url, "counter", {"count": 3})  # no worker yet: it stays queued
    assert wait_status(gateway.url, canceled_queued, {"queued"})
    assert gateway_cancel(gateway.url, canceled_queued) == "canceled"
    jobs.append(canceled_queued)

    doomed = make_stack.start_worker()  # the worker lost with its machine: the gateway's reaper ends its job
    lost = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    read_events(f"{gateway.url}/jobs/{lost}/events", limit=3)
    kill_machine(doomed)
    assert wait_status(gateway.url, lost, {"failed"}, timeout_s=60)["error"]["code"] == "WORKER_LOST"
    jobs.append(lost)

    make_stack.start_worker()
    finished = invoke(gateway.url, "counter", {"count": 2})
    failed = invoke(gateway.url, "raises", {"message": "boom"})
    horse_lost = invoke(gateway.url, "die", {"after": 2})
    retried = invoke(gateway.url, "flaky", {"marker": str(tmp_path / "flaky"), "failures": 1}, retries=1)
    for job_id, status in ((finished, "finished"), (failed, "failed"), (horse_lost, "failed"), (retried, "finished")):
        assert wait_status(gateway.url, job_id, {"finished", "failed"}, timeout_s=60)["status"] == status
    running = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    read_events(f"{gateway.url}/jobs/{running}/events", limit=3)
    assert gateway_cancel(gateway.url, running) == "canceled"
    jobs += [finished, failed, horse_lost, retried, running]

    # Every key of every job has a TTL, and so have the recent list and RQ's view of the jobs and
    # workers: its registries (a started one is deleted once empty) and its worker records and sets.
    def of_jobs(key: bytes) -> bool:
        return key == b"factory:recent" or key.startswith(RQ_VIEW) or any(job_id.encode() in key for job_id in jobs)

    deadline = time.monotonic() + 30  # a canceled job's worker closes RQ's hash moments after the cancel
    while True:
        lacking = {key for key, ttl in keys_with_ttl(client).items() if ttl == -1 and of_jobs(key)}
        if not lacking:
            break
        assert time.monotonic() < deadline, f"keys without a TTL: {sorted(lacking)}"
        time.sleep(0.2)
    assert any(of_jobs(key) for key in keys_with_ttl(client))
    shown = {key.split(b":")[1] for key in keys_with_ttl(client) if key.startswith(RQ_VIEW)}
    assert shown == {b"finished", b"failed", b"canceled", b"worker", b"workers"}, shown

    # Once the retention passed (and the workers left), what is left is what was there before.
    for proc in make_stack.procs:
        if proc is not gateway:
            proc.stop()
    deadline = time.monotonic() + 60
    while (left := set(keys_with_ttl(client)) - baseline - CONSTANT_KEYS) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == set(), f"keys left after the retention: {sorted(left)}"
