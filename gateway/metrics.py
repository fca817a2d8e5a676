"""Prometheus metrics (``GET /metrics``): this gateway process's own, then the factory-wide ones from Redis.

Two kinds, on purpose:

- **Per process** (reset when the process restarts; scrape each gateway, Prometheus' ``rate``
  handles the resets): ``factory_jobs_submitted_total``, ``factory_requests_refused_total``,
  ``factory_sse_streams_open``, ``factory_sse_frames_sent_total``, ``factory_sse_bytes_sent_total``,
  ``factory_sse_resumes_total``, ``factory_jobs_canceled_total``, ``factory_redis_errors_total``
  and prometheus_client's ``process_*`` / ``python_*`` figures of this gateway.
- **Factory-wide, from Redis** (the same on every gateway, never reset by a restart): jobs by
  prefab, function, version and outcome, their duration and time-to-first-event histograms, queue
  depth and oldest waiting job, running jobs, and each worker alive with its process figures.
  Sum the per-process kind across gateways; never sum the factory-wide kind.

Collectors live in a registry owned by the app instance, never the process-global default, so two
apps in one process (tests) do not collide. Redis was chosen over prometheus_client's multiprocess
mode because the workers may run on other machines than the gateway (compose, many hosts): only
Redis sees all of them.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.stats import Snapshot

_JOB_LABELS = ["prefab_id", "function", "version"]


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        registry = self.registry
        self.jobs_submitted = Counter(
            "factory_jobs_submitted", "Jobs accepted by this gateway", ["prefab_id", "function"], registry=registry
        )
        self.requests_refused = Counter(
            "factory_requests_refused", "Requests answered with an error, by error code", ["code"], registry=registry
        )
        self.streams_open = Gauge("factory_sse_streams_open", "SSE streams being served", registry=registry)
        self.frames_sent = Counter("factory_sse_frames_sent", "SSE event frames written", registry=registry)
        self.bytes_sent = Counter("factory_sse_bytes_sent", "Bytes written on SSE streams", registry=registry)
        self.resumes = Counter(
            "factory_sse_resumes", "SSE streams opened after a Last-Event-ID (resumed)", registry=registry
        )
        self.cancels = Counter("factory_jobs_canceled", "Cancel requests that ended a job", registry=registry)
        self.redis_errors = Counter(
            "factory_redis_errors", "Redis round trips that failed, by where", ["where"], registry=registry
        )
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def render(self, snapshot: Snapshot | None) -> bytes:
        """The exposition text: this process's metrics, then the factory-wide ones (when Redis answered)."""
        text = generate_latest(self.registry)
        if snapshot is not None:
            cluster = CollectorRegistry(auto_describe=False)
            cluster.register(_SnapshotCollector(snapshot))
            text += generate_latest(cluster)
        return text


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        jobs = CounterMetricFamily(
            "factory_jobs", "Jobs ended (or retried), by outcome", labels=[*_JOB_LABELS, "outcome", "error_code"]
        )
        for count in snap.outcomes:
            labels = count.labels
            jobs.add_metric(
                [labels.prefab_id, labels.function, labels.version, count.outcome, count.error_code], count.count
            )
        yield jobs
        durations = HistogramMetricFamily(
            "factory_job_duration_seconds",
            "From a job's start (its creation if it never ran) to its terminal event",
            labels=[*_JOB_LABELS, "outcome"],
        )
        for h in snap.durations:
            durations.add_metric(
                [h.labels.prefab_id, h.labels.function, h.labels.version, h.outcome], h.cumulative(), h.sum_s
            )
        yield durations
        first = HistogramMetricFamily(
            "factory_job_time_to_first_event_seconds", "From a job's creation to its first event", labels=_JOB_LABELS
        )
        for h in snap.first_event:
            first.add_metric([h.labels.prefab_id, h.labels.function, h.labels.version], h.cumulative(), h.sum_s)
        yield first
        yield from self._now()

    def _now(self) -> Iterator[Metric]:
        snap = self.snapshot
        depth = GaugeMetricFamily("factory_queue_depth", "Jobs waiting in the queue", labels=["queue"])
        oldest = GaugeMetricFamily(
            "factory_queue_oldest_waiting_seconds", "How long the oldest waiting job has waited", labels=["queue"]
        )
        for queue in snap.queues:
            depth.add_metric([queue.name], queue.depth)
            oldest.add_metric([queue.name], queue.oldest_waiting_s or 0.0)
        yield depth
        yield oldest
        yield GaugeMetricFamily("factory_jobs_running", "Jobs running now (live heartbeat)", value=snap.running_jobs)
        yield GaugeMetricFamily("factory_workers_alive", "Worker processes alive", value=len(snap.workers))
        info = GaugeMetricFamily(
            "factory_worker_info", "A live worker and what it serves (value 1)", labels=["worker", "host", "prefabs"]
        )
        cpu = CounterMetricFamily(
            "factory_worker_cpu_seconds", "CPU time of a worker and its horses", labels=["worker"]
        )
        rss = GaugeMetricFamily(
            "factory_worker_resident_memory_bytes", "Resident memory of a worker", labels=["worker"]
        )
        for worker in snap.workers:
            info.add_metric([worker.name, worker.host, ",".join(worker.prefabs)], 1)
            cpu.add_metric([worker.name], worker.cpu_s)
            rss.add_metric([worker.name], worker.rss_bytes)
        yield from (info, cpu, rss)
