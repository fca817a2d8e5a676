"""Prometheus metrics of a gateway process (``GET /metrics``).

Collectors live in a registry owned by the app instance, never the process-global default,
so two apps in one process (tests) do not collide.
"""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.jobs_submitted = Counter(
            "factory_jobs_submitted", "Jobs accepted by this gateway", ["prefab_id", "function"], registry=self.registry
        )
        self.requests_refused = Counter(
            "factory_requests_refused", "Calls refused before enqueue", ["code"], registry=self.registry
        )
        self.streams_open = Gauge("factory_sse_streams_open", "SSE streams being served", registry=self.registry)
        self.frames_sent = Counter("factory_sse_frames_sent", "SSE event frames written", registry=self.registry)
        self.cancels = Counter("factory_jobs_canceled", "Cancel requests that ended a job", registry=self.registry)
