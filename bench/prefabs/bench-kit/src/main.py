"""Benchmark prefab: the load shapes ``python -m bench`` drives through the factory.

Every streaming event carries its index ``i`` (from 1) so a reader can check order, loss and
repeats without trusting the SSE ids; ``paced`` also stamps each event with ``time.time_ns()``
taken right before the yield, so the reader measures yield→parse latency on the same clock.
"""

import time
from collections.abc import Iterator
from typing import Any


def firehose(count: int, payload_bytes: int = 0, start_delay_s: float = 0.0) -> Iterator[dict[str, Any]]:
    payload = "x" * payload_bytes
    if start_delay_s > 0:
        time.sleep(start_delay_s)  # lets readers attach before the first event (fan-out)
    for i in range(1, count + 1):
        yield {"type": "progress", "data": {"i": i, "p": payload}}
    yield {"type": "done", "data": {"count": count}}


def paced(count: int, rate_hz: float) -> Iterator[dict[str, Any]]:
    period_ns = int(1e9 / rate_hz)
    next_ns = time.monotonic_ns()
    for i in range(1, count + 1):
        next_ns += period_ns
        wait_ns = next_ns - time.monotonic_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
        yield {"type": "progress", "data": {"i": i, "t_ns": time.time_ns()}}
    yield {"type": "done", "data": {"count": count}}


def trivial() -> dict[str, Any]:
    return {"ok": True}


def spin(seconds: float) -> dict[str, Any]:
    """CPU-bound: count until ``seconds`` of this process's CPU time have gone."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return {"spun_s": seconds, "n": n}


def sleepy(seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return {"slept_s": seconds}
