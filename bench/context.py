"""What every scenario is handed: the sizes of this run, the cluster, an HTTP client, and
the baselines measured so far (each measured once per run, by whichever scenario needs it first).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.caller import Caller
from bench.procs import Cluster


@dataclass(frozen=True)
class Sizes:
    pubsub_pipelined: int
    pubsub_single: int
    paced_count: int
    rate_hz: float
    stream_count: int
    ttfe_jobs: int
    throughput_jobs: int
    fanout_readers: int
    fanout_events: int
    many_jobs: int
    events_per_job: int
    idle_streams: tuple[int, ...]
    start_probes: int
    scaling_workers: tuple[int, ...]
    scaling_jobs: int
    sleep_s: float
    peer_calls: int = 150  # sequential calls per form, for time to first event
    peer_stream: int = 20_000
    peer_trivial_jobs: int = 500
    peer_many_jobs: int = 1_000
    curve_callers: tuple[int, ...] = (1, 10, 100, 1000)
    curve_streams: tuple[int, ...] = (100, 1_000, 3_000, 10_000)
    curve_events_per_job: tuple[int, ...] = (1, 10, 100, 1_000)
    curve_workers: tuple[int, ...] = (1, 2, 4, 8)
    curve_cpu_s: float = 0.25  # CPU-bound job length


FULL = Sizes(
    pubsub_pipelined=200_000,
    pubsub_single=50_000,
    paced_count=10_000,
    rate_hz=1000.0,
    stream_count=50_000,
    ttfe_jobs=200,
    throughput_jobs=500,
    fanout_readers=100,
    fanout_events=5_000,
    many_jobs=1_000,
    events_per_job=100,
    idle_streams=(1_000, 10_000),
    start_probes=30,
    scaling_workers=(1, 2, 4, 8),
    scaling_jobs=64,
    sleep_s=0.5,
)

QUICK = Sizes(
    pubsub_pipelined=20_000,
    pubsub_single=5_000,
    paced_count=1_000,
    rate_hz=1000.0,
    stream_count=5_000,
    ttfe_jobs=20,
    throughput_jobs=50,
    fanout_readers=20,
    fanout_events=500,
    many_jobs=100,
    events_per_job=100,
    idle_streams=(200,),
    start_probes=10,
    scaling_workers=(1, 2),
    scaling_jobs=8,
    sleep_s=0.2,
    peer_calls=20,
    peer_stream=5_000,
    peer_trivial_jobs=50,
    peer_many_jobs=100,
    curve_callers=(1, 10),
    curve_streams=(100,),
    curve_events_per_job=(1, 100),
    curve_workers=(1, 2),
    curve_cpu_s=0.1,
)


@dataclass
class Context:
    cluster: Cluster
    sizes: Sizes
    caller: Caller = field(default_factory=Caller)  # every POST of a call (bench.caller)
    baselines: dict[str, Any] = field(default_factory=dict)

    async def baseline(self, name: str, measure: "Callable[[Context], Awaitable[Any]]") -> Any:
        """The baseline ``name``, measured now unless an earlier scenario of this run did."""
        if name not in self.baselines:
            self.baselines[name] = await measure(self)
        return self.baselines[name]
