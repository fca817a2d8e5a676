"""End to end over HTTP: real gateway and worker processes, a real redis-server."""

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import requests

from factory.store import fields, keys
from tests.openai_double import REPLY, openai_double
from tests.stack import Gateway, Stack, invoke, read_events, runner_pids, running, wait_status, wait_until

pytestmark = pytest.mark.e2e


def test_invoke_answers_at_once_and_streams_every_event(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/invoke", json={"function_name": "my_stream_function", "inputs": {"param": "hi"}}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and len(body["job_id"]) == 32
    assert response.headers["Location"] == body["status_url"]
    status, events = read_events(body["events_url"])
    assert status == 200
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events] == ["start"] + ["progress"] * 5 + ["done"]
    assert events[0].event["data"]["param"] == "hi"
    job = wait_status(gateway.url, body["job_id"], {"finished"})
    assert job["output"] == events[-1].event["data"]
    assert job["last_event_id"] == len(events)
    assert job["started_at"] and job["ended_at"] and job["worker"]


def test_seed_python_client_unchanged(gateway: Gateway) -> None:
    """The seed's client, verbatim but for the host, against the seed's endpoint."""
    printed: list[str] = []
    response = requests.post(
        f"{gateway.url}/invoke/my_stream_function",
        json={"inputs": {"param": "test"}},
        stream=True,  # important: enable streaming
    )
    assert response.headers["X-Job-Id"]
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            if event["type"] == "progress":
                printed.append(f"progress: {event['data']['percentage']}%")
            elif event["type"] == "content":
                printed.append(event["data"])
            elif event["type"] == "done":
                printed.append("\ndone!")
    assert printed == [f"progress: {p}%" for p in (20, 40, 60, 80, 100)] + ["\ndone!"]


def test_every_network_chunk_holds_whole_events(gateway: Gateway) -> None:
    """The seed's JavaScript client splits each chunk on newlines without buffering.

    TCP keeps no write boundaries when the reader falls behind; a reader that keeps up (as
    here) reads what each write sent, so each write must hold whole events (``pack_writes``).
    """
    with httpx.stream(
        "POST", f"{gateway.url}/invoke/counter", json={"inputs": {"count": 300, "delay_s": 0.001}}, timeout=30
    ) as response:
        chunks = list(response.iter_raw())
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.endswith(b"\n\n"), chunk
        for block in chunk.split(b"\n\n")[:-1]:
            lines = block.split(b"\n")
            assert all(line.startswith((b"id: ", b"data: ", b"retry: ", b":")) for line in lines), block
            for line in lines:
                if line.startswith(b"data: "):
                    json.loads(line[6:])


def test_batch_process_reports_progress(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "batch_process", {"items": ["a", "b", 3]})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["start", "progress", "progress", "progress", "done"]
    assert [e.event["data"]["percentage"] for e in events[1:4]] == [33, 66, 100]


def test_non_streaming_function_returns_the_result(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/invoke/word_count", json={"inputs": {"text": "a b a\nc"}}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "SUCCESS"
    assert body["output"]["words"] == 4 and body["output"]["top"][0] == ["a", 2]
    assert body["job_id"] == response.headers["X-Job-Id"]


def test_prefab_qualified_seed_form(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/invoke/behaviours/async_add", json={"inputs": {"a": 1.5, "b": 2}}, timeout=30)
    assert response.status_code == 200
    assert response.json()["output"] == 3.5


def test_async_generator_and_bare_strings(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "async_counter", {"count": 3})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["progress"] * 3 + ["done"]
    job_id = invoke(gateway.url, "bare_strings", {"words": ["Hel", "lo"]})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [(e.type, e.event.get("data")) for e in events] == [("content", "Hel"), ("content", "lo"), ("done", None)]


def test_generator_without_terminal_event_gets_done(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "no_done", {"count": 2})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["progress", "progress", "done"]
    assert wait_status(gateway.url, job_id, {"finished"})["status"] == "finished"


def test_resume_after_last_event_id_exactly_once(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "counter", {"count": 40, "delay_s": 0.01})
    url = f"{gateway.url}/jobs/{job_id}/events"
    _, first = read_events(url, limit=7)  # the client drops the connection here
    _, rest = read_events(url, last_event_id=first[-1].seq)
    seqs = [e.seq for e in first + rest]
    assert seqs == list(range(1, 43))
    assert rest[-1].type == "done"
    _, by_query = read_events(f"{url}?last_event_id=40")
    assert [e.seq for e in by_query] == [41, 42]


def test_reconnect_after_the_end_gets_204(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "counter", {"count": 1})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    status, _ = read_events(f"{gateway.url}/jobs/{job_id}/events", last_event_id=events[-1].seq)
    assert status == 204
    status, again = read_events(f"{gateway.url}/jobs/{job_id}/events", last_event_id=1)
    assert status == 200 and [e.seq for e in again] == [2, 3]


def test_unknown_job_is_404(gateway: Gateway) -> None:
    for path in ("", "/events"):
        response = httpx.get(f"{gateway.url}/jobs/{'0' * 32}{path}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"


def test_five_readers_get_every_event(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "counter", {"count": 60, "delay_s": 0.005})
    results: list[list[int]] = []

    def reader() -> None:
        _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
        results.append([e.seq for e in events])

    def last_event_id() -> int:
        return int(httpx.get(f"{gateway.url}/jobs/{job_id}").json()["last_event_id"])

    threads = [threading.Thread(target=reader) for _ in range(5)]
    for joined, thread in enumerate(threads):
        # Readers join at different moments of the job: each once the log holds 10 more events.
        deadline = time.monotonic() + 30
        while last_event_id() < joined * 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [list(range(1, 63))] * 5


def test_two_workers_run_two_jobs_at_once(gateway: Gateway) -> None:
    first = invoke(gateway.url, "sleeper", {"seconds": 0.6})
    second = invoke(gateway.url, "sleeper", {"seconds": 0.6})
    a = wait_status(gateway.url, first, {"finished", "failed"})
    b = wait_status(gateway.url, second, {"finished", "failed"})
    assert a["status"] == b["status"] == "finished"
    assert a["worker"] != b["worker"]
    assert a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]


def test_a_finished_job_keeps_compact_hashes(gateway: Gateway, shared_stack: Stack) -> None:
    """What a finished job keeps for its retention stays in Redis's compact hash encoding (the embedded
    Redis's ``COMPACT_HASHES``): RQ's hash holds the job's call, over Redis's default 64-byte limit."""
    job_id = invoke(gateway.url, "counter", {"count": 2})
    assert wait_status(gateway.url, job_id, {"finished", "failed"})["status"] == "finished"
    client = redis.Redis.from_url(shared_stack.redis_url)
    rq_hash = keys.rq_job_key(job_id)
    wait_until(lambda: client.hget(rq_hash, fields.RQ_STATUS) == b"finished", timeout_s=30)  # its end comes just after
    for key in (rq_hash, keys.job_key(job_id)):
        assert client.object("encoding", key) in (b"ziplist", b"listpack"), key
    assert int(client.memory_usage(rq_hash, samples=0) or 0) < 1200


def test_timeout_is_not_swallowed_by_the_prefab(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "sleeper", {"seconds": 5})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["start", "error"]
    assert events[-1].event["error_code"] == "TIMEOUT"
    job = wait_status(gateway.url, job_id, {"failed"})
    assert job["error"]["code"] == "TIMEOUT"


def test_prefab_exception_ends_with_unexpected_error(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "raises", {"message": "boom at step 3"})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["start", "error"]
    assert events[-1].event["error_code"] == "UNEXPECTED_ERROR"
    assert "boom at step 3" in events[-1].event["data"]
    assert "Traceback" not in events[-1].event["data"]
    assert wait_status(gateway.url, job_id, {"failed"})["error"]["code"] == "UNEXPECTED_ERROR"


@pytest.mark.parametrize("kind", ["number", "no_type", "unserialisable"])
def test_malformed_event_ends_with_invalid_event(gateway: Gateway, kind: str) -> None:
    job_id = invoke(gateway.url, "malformed", {"kind": kind})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["start", "error"]
    assert events[-1].event["error_code"] == "INVALID_EVENT"


def test_missing_secret_refuses_to_run(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "needs_secret", {})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["error"]
    assert events[0].event["error_code"] == "MISSING_SECRET"
    assert "BEHAVIOURS_TOKEN" in events[0].event["data"]


def test_declared_secret_reaches_only_its_function_and_factory_credentials_none(make_stack: Stack) -> None:
    make_stack.env["BEHAVIOURS_TOKEN"] = "s3cret-value"
    make_stack.env["FACTORY_TOKEN_SECRET"] = "factory-internal-secret"
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "needs_secret", {})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert events[-1].event["data"] == {"has_token": True, "length": 12}
    response = httpx.post(f"{gateway.url}/invoke/secret_snoop", json={"inputs": {}}, timeout=30)
    assert response.json()["output"] == {"visible": []}
    job = httpx.get(f"{gateway.url}/jobs/{job_id}").text
    assert "s3cret-value" not in job
    for proc in make_stack.procs:
        assert "s3cret-value" not in proc.log()


def test_each_job_runs_in_its_own_workspace(gateway: Gateway, shared_stack: Stack) -> None:
    response = httpx.post(f"{gateway.url}/invoke/workspace_report", json={"inputs": {}}, timeout=30)
    report = response.json()["output"]
    assert report["inputs"] and report["outputs"]
    assert Path(report["cwd"]).name == response.json()["job_id"]
    assert not Path(report["cwd"]).exists()


@pytest.mark.churn
def test_cancel_running_job_stops_it_within_a_second(make_stack: Stack) -> None:
    """Measured where the job runs: the prefab's process is gone within a second of the cancel."""
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    runner_id = _runner_id(gateway)  # the prefab's process in the only worker's horse, which runs the next job too
    (runner,) = runner_pids(worker)
    job_id = invoke(gateway.url, "counter", {"count": 100_000, "delay_s": 0.01})
    url = f"{gateway.url}/jobs/{job_id}/events"
    _, started = read_events(url, limit=3)
    assert running(runner)
    response = httpx.post(f"{gateway.url}/jobs/{job_id}/cancel", timeout=10)
    canceled_at = time.monotonic()  # the terminal event is written and published before the answer
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    wait_until(lambda: not running(runner), timeout_s=30)
    assert time.monotonic() - canceled_at < 1.0
    _, rest = read_events(url, last_event_id=started[-1].seq)
    assert rest[-1].type == "error" and rest[-1].event["error_code"] == "CANCELED"
    # The terminal event is the log's last: nothing the stopped job still yielded was appended after it.
    assert httpx.get(f"{gateway.url}/jobs/{job_id}").json()["last_event_id"] == rest[-1].seq
    assert _runner_id(gateway) != runner_id  # the worker went on, with a fresh process for the prefab


def _runner_id(gateway: Gateway) -> str:
    response = httpx.post(f"{gateway.url}/invoke/whoami", json={"inputs": {}}, timeout=30)
    runner: str = response.json()["output"]["runner"]
    return runner


def test_cancel_queued_job_never_starts(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    job_id = invoke(gateway.url, "counter", {"count": 3})
    response = httpx.post(f"{gateway.url}/jobs/{job_id}/cancel")
    assert response.json()["status"] == "canceled"
    make_stack.start_worker()
    marker = invoke(gateway.url, "counter", {"count": 1})
    wait_status(gateway.url, marker, {"finished"})  # the worker has drained the queue
    job = httpx.get(f"{gateway.url}/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["started_at"] is None
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [(e.type, e.event["error_code"]) for e in events] == [("error", "CANCELED")]


def test_resume_on_a_second_gateway(make_stack: Stack) -> None:
    first = make_stack.start_gateway()
    second = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(first.url, "counter", {"count": 30, "delay_s": 0.01})
    _, head = read_events(f"{first.url}/jobs/{job_id}/events", limit=5)
    _, tail = read_events(f"{second.url}/jobs/{job_id}/events", last_event_id=head[-1].seq)
    assert [e.seq for e in head + tail] == list(range(1, 33))


def test_chat_stream_through_an_openai_compatible_server(make_stack: Stack) -> None:
    with openai_double() as llm:
        make_stack.env.update({"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-key"})
        gateway = make_stack.start_gateway()
        make_stack.start_worker()
        messages = [{"role": "user", "content": "Say hello"}]
        job_id = invoke(gateway.url, "chat_stream", {"messages": messages})
        _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert events[0].type == "start" and events[0].event["data"]["model"] == "gpt-4o-mini"
    assert "".join(e.event["data"] for e in events if e.type == "content") == "".join(REPLY)
    assert events[-1].type == "done"
    assert llm.requests[0]["messages"] == messages and llm.requests[0]["stream"] is True
    assert llm.requests[0]["authorization"] == "Bearer sk-test-key"  # the declared secret reached it


def test_chat_stream_without_its_secret_is_refused(gateway: Gateway) -> None:
    job_id = invoke(gateway.url, "chat_stream", {"messages": [{"role": "user", "content": "hi"}]})
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [(e.type, e.event.get("error_code")) for e in events] == [("error", "MISSING_SECRET")]
