"""Metrics and /stats after a known workload, with exact counts, on a stack of its own (its own Redis db).

The factory-wide counters come from Redis: they survive a gateway restart, while the gateway's own
per-process counters start again from zero.
"""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factory.jobstats import BUCKETS_S, Histogram, JobLabels
from factory.registry import BUILD_FUNCTION
from tests.stack import Stack, invoke, read_events, wait_status

pytestmark = pytest.mark.e2e

EXAMPLES = {"prefab_id": "streaming-examples", "version": "1.0.0"}
BEHAVIOURS = {"prefab_id": "behaviours", "version": "1.0.0"}


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) → value."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    """The sum over every label set, the prefab folders' deployment builds left out (they are jobs too)."""
    return sum(v for (n, labels), v in samples.items() if n == name and ("function", BUILD_FUNCTION) not in labels)


def run_workload(url: str) -> None:
    """3 finished, 2 failed, 1 canceled; one 422 and one 404; one stream read whole and one resumed."""
    long = invoke(url, "counter", {"count": 10_000, "delay_s": 0.05}, prefab_id="behaviours")
    wait_status(url, long, {"started"})
    assert httpx.post(f"{url}/jobs/{long}/cancel", timeout=10).status_code == 200
    wait_status(url, long, {"canceled"})
    done = [invoke(url, "word_count", {"text": f"a b {n}"}) for n in range(3)]
    failed = [invoke(url, "raises", {"message": "no"}, prefab_id="behaviours") for _ in range(2)]
    streamed = invoke(url, "my_stream_function", {"param": "metrics"})
    for job_id in done + [streamed]:
        wait_status(url, job_id, {"finished"})
    for job_id in failed:
        wait_status(url, job_id, {"failed"})
    assert httpx.post(f"{url}/invoke", json={"function_name": "word_count", "inputs": {}}).status_code == 422
    assert httpx.post(f"{url}/invoke", json={"function_name": "nope", "inputs": {}}).status_code == 404
    status, events = read_events(f"{url}/jobs/{streamed}/events")
    assert status == 200 and len(events) == 7
    status, resumed = read_events(f"{url}/jobs/{streamed}/events", last_event_id=4)
    assert status == 200 and [e.seq for e in resumed] == [5, 6, 7]


def test_metrics_count_a_known_workload_exactly(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    run_workload(gateway.url)

    samples = scrape(gateway.url)
    jobs = "factory_jobs_total"
    word_count = {**EXAMPLES, "function": "word_count"}
    assert value(samples, jobs, **word_count, outcome="finished", error_code="") == 3
    assert value(samples, jobs, **EXAMPLES, function="my_stream_function", outcome="finished", error_code="") == 1
    raises = {**BEHAVIOURS, "function": "raises"}
    assert value(samples, jobs, **raises, outcome="failed", error_code="UNEXPECTED_ERROR") == 2
    counter = {**BEHAVIOURS, "function": "counter"}
    assert value(samples, jobs, **counter, outcome="canceled", error_code="CANCELED") == 1
    assert total(samples, jobs) == 7
    assert value(samples, "factory_job_duration_seconds_count", **word_count, outcome="finished") == 3
    assert value(samples, "factory_job_duration_seconds_count", **raises, outcome="failed") == 2
    assert total(samples, "factory_job_duration_seconds_count") == 7
    assert value(samples, "factory_job_time_to_first_event_seconds_count", **word_count) == 3
    assert total(samples, "factory_job_time_to_first_event_seconds_count") == 7
    assert value(samples, "factory_job_time_to_first_event_seconds_bucket", **word_count, le="+Inf") == 3

    assert total(samples, "factory_jobs_submitted_total") == 7
    assert value(samples, "factory_requests_refused_total", code="VALIDATION_ERROR") == 1
    assert value(samples, "factory_requests_refused_total", code="NOT_FOUND") == 1
    assert value(samples, "factory_sse_frames_sent_total") == 7 + 3
    assert value(samples, "factory_sse_resumes_total") == 1
    assert value(samples, "factory_sse_bytes_sent_total") > 0
    assert value(samples, "factory_sse_streams_open") == 0
    assert value(samples, "factory_jobs_canceled_total") == 1
    assert value(samples, "factory_jobs_running") == 0
    assert value(samples, "factory_queue_depth", queue="factory.streaming-examples") == 0
    assert value(samples, "factory_workers_alive") == 1
    assert [labels for (name, labels) in samples if name == "factory_worker_info"][0] >= {
        ("prefabs", "behaviours,streaming-examples")
    }
    assert value(samples, "process_resident_memory_bytes") > 0

    stats = httpx.get(f"{gateway.url}/stats", timeout=10).json()
    # The two prefab folders' deployment builds are jobs that finished too.
    assert stats["jobs_by_outcome"] == {"finished": 4 + 2, "failed": 2, "canceled": 1}
    assert stats["running_jobs"] == 0
    assert [w["prefabs"] for w in stats["workers"]] == [["behaviours", "streaming-examples"]]
    queues = {"factory.deploy": 0, "factory.behaviours": 0, "factory.streaming-examples": 0}
    assert {q["name"]: q["depth"] for q in stats["queues"]} == queues

    # A new gateway process: its own counters start at zero, the factory-wide ones do not.
    gateway.stop()
    again = make_stack.start_gateway()
    samples = scrape(again.url)
    assert total(samples, "factory_jobs_submitted_total") == 0
    assert total(samples, "factory_jobs_total") == 7
    assert value(samples, "factory_jobs_total", **word_count, outcome="finished", error_code="") == 3


def test_queue_depth_and_oldest_waiting_job_without_workers(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    for n in range(3):
        invoke(gateway.url, "word_count", {"text": str(n)})
    samples = scrape(gateway.url)
    assert value(samples, "factory_queue_depth", queue="factory.streaming-examples") == 3
    assert value(samples, "factory_queue_oldest_waiting_seconds", queue="factory.streaming-examples") >= 0
    assert value(samples, "factory_workers_alive") == 0
    stats = httpx.get(f"{gateway.url}/stats", timeout=10).json()
    [queue] = [q for q in stats["queues"] if q["name"] == "factory.streaming-examples"]
    assert queue["depth"] == 3 and queue["oldest_waiting_s"] is not None


def test_a_stopped_worker_leaves_the_workers_alive(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    assert value(scrape(gateway.url), "factory_workers_alive") == 1
    worker.stop()
    assert value(scrape(gateway.url), "factory_workers_alive") == 0


def test_histograms_are_cumulative_with_an_infinite_bucket() -> None:
    histogram = Histogram(JobLabels("p", "f", "1"), counts=[1] + [0] * (len(BUCKETS_S) - 1) + [2], sum_s=7.5)
    pairs = histogram.cumulative()
    assert pairs[0] == (repr(BUCKETS_S[0]), 1)
    assert pairs[-2] == (repr(BUCKETS_S[-1]), 1)
    assert pairs[-1] == ("+Inf", 3)
    assert histogram.count == 3
