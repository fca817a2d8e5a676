"""The job's log lines: one JSON line per transition (queued, started, retried, ended) with the job's
fields, and job_id on every line the prefab emits while it runs (its logging and its print output)."""

import json
import time
from typing import Any

import httpx
import pytest

from tests.stack import Proc, Stack, invoke, wait_status

pytestmark = pytest.mark.e2e


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log().splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            lines.append(parsed)
    return lines


def wait_lines(proc: Proc, job_id: str, event: str, count: int = 1) -> list[dict[str, Any]]:
    """The job's lines in the process's log, once ``count`` lines of ``event`` are there."""
    deadline = time.monotonic() + 30
    while True:
        lines = [line for line in json_lines(proc) if line.get("job_id") == job_id]
        if sum(line.get("event") == event for line in lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"no {event} line for {job_id}:\n{proc.log()[-3000:]}"
        time.sleep(0.05)


def test_every_transition_is_one_line_with_the_jobs_fields(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    job_id = invoke(gateway.url, "chatty", {"text": "hello"}, prefab_id="behaviours")
    wait_status(gateway.url, job_id, {"finished"})

    [queued] = [line for line in wait_lines(gateway, job_id, "queued") if line.get("event") == "queued"]
    assert queued["prefab_id"] == "behaviours" and queued["function"] == "chatty"
    assert queued["version"] == "1.0.0" and queued["queue"] == "factory.behaviours"

    lines = wait_lines(worker, job_id, "ended")
    events = [line["event"] for line in lines if "event" in line]
    assert events == ["started", "ended"]
    started, ended = (next(line for line in lines if line.get("event") == e) for e in ("started", "ended"))
    for line in (started, ended):
        assert line["prefab_id"] == "behaviours" and line["function"] == "chatty" and line["version"] == "1.0.0"
        assert line["worker"] and line["attempt"] == 1
    assert ended["outcome"] == "finished" and ended["duration_s"] >= 0
    assert ended["level"] == "info"

    # The prefab's own output, each a line of the job.
    printed = [line for line in lines if line.get("stream") == "stdout"]
    assert [line["msg"] for line in printed] == ["printed hello"]
    assert printed[0]["logger"] == "prefab.behaviours"
    complained = [line for line in lines if line.get("stream") == "stderr"]
    assert [(line["msg"], line["level"]) for line in complained] == [("complained hello", "warning")]
    logged = [line for line in lines if line["logger"] == "behaviours"]
    assert [line["msg"] for line in logged] == ["logged hello"]
    assert "printed hello" not in [line.get("msg") for line in json_lines(worker) if "job_id" not in line]
    assert "printed hello" not in worker.log().replace('"printed hello"', "")  # never a raw, untagged line


@pytest.mark.churn
def test_a_retried_job_logs_each_attempt_then_its_end(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    job_id = invoke(gateway.url, "raises", {"message": "again"}, prefab_id="behaviours", retries=1)
    wait_status(gateway.url, job_id, {"failed"})
    lines = wait_lines(worker, job_id, "ended")
    transitions = [(line["event"], line.get("attempt")) for line in lines if "event" in line]
    assert transitions == [("started", 1), ("retried", 1), ("started", 2), ("ended", 2)]
    ended = lines[-1] if lines[-1].get("event") == "ended" else next(x for x in lines if x.get("event") == "ended")
    assert ended["outcome"] == "failed" and ended["error_code"] == "UNEXPECTED_ERROR"


def test_a_cancel_at_the_gateway_is_logged_as_the_end(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()  # no worker: the job stays queued
    job_id = invoke(gateway.url, "word_count", {"text": "x"})
    assert wait_status(gateway.url, job_id, {"queued"})
    assert httpx.post(f"{gateway.url}/jobs/{job_id}/cancel", timeout=10).status_code == 200
    lines = wait_lines(gateway, job_id, "ended")
    assert [line["event"] for line in lines if "event" in line] == ["queued", "ended"]
    assert lines[-1]["outcome"] == "canceled"


def test_each_request_has_one_access_line_once_its_response_is_complete(make_stack: Stack) -> None:
    """The access log is the app's: a line per request with its status and duration, a stream's when it ends."""
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "chatty", {"text": "hello"}, prefab_id="behaviours")
    with httpx.stream("GET", f"{gateway.url}/jobs/{job_id}/events?%74oken=t0ps3cret", timeout=30) as s:
        assert s.status_code == 200 and "done" in s.read().decode()
    assert httpx.get(f"{gateway.url}/jobs/nope").status_code == 404
    deadline = time.monotonic() + 30
    while True:
        access = [line for line in json_lines(gateway) if line.get("logger") == "gateway.access"]
        if len(access) >= 3 and "nope" in access[-1]["msg"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    requests = [line["msg"].split('"')[1] for line in access]
    lines = {request: line for request, line in zip(requests, access, strict=True)}
    assert lines["POST /invoke HTTP/1.1"]["status"] == 202
    stream = lines[f"GET /jobs/{job_id}/events?token=[redacted] HTTP/1.1"]
    assert stream["status"] == 200 and stream["duration_s"] > 0 and stream["msg"].endswith(" 200")
    assert lines["GET /jobs/nope HTTP/1.1"]["status"] == 404
    ours = ("POST /invoke HTTP/1.1", f"GET /jobs/{job_id}/events?token=[redacted] HTTP/1.1", "GET /jobs/nope HTTP/1.1")
    assert [requests.count(request) for request in ours] == [1, 1, 1]  # one line per request (the rest: probes)
    assert "t0ps3cret" not in gateway.log()
