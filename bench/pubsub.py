"""The raw Redis ceiling: redis-py PUBLISH from one process → an asyncio subscriber in the bench.

The subscriber reads the way the gateway's relay hub does (``get_message`` on one pub/sub
connection); the publisher is a separate process, as a worker is. Three modes: pipelined
(batches of PUBLISH per round trip), one-by-one (a round trip each), and paced (a fixed rate,
each message stamped with ``time.time_ns()`` for latency).

``python -m bench.pubsub URL MODE COUNT RATE_HZ`` is the publisher; it waits for the
subscriber to be on the channel before it starts.
"""

import asyncio
import sys
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from bench import keys
from bench.context import Context
from bench.results import percentile

PIPELINE_BATCH = 100
PAYLOAD = b'{"type":"progress","data":{"i":%d,"p":""}}'


@dataclass(frozen=True)
class PubSubResult:
    messages: int
    rate_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float


def publish(url: str, mode: str, count: int, rate_hz: float) -> None:
    client = redis.Redis.from_url(url)
    channel = keys.pubsub_channel()
    while not client.pubsub_numsub(channel)[0][1]:
        time.sleep(0.01)
    if mode == "pipelined":
        for start in range(0, count, PIPELINE_BATCH):
            with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + PIPELINE_BATCH, count)):
                    pipe.publish(channel, PAYLOAD % i)
                pipe.execute()
    elif mode == "single":
        for i in range(count):
            client.publish(channel, PAYLOAD % i)
    else:
        period_ns = int(1e9 / rate_hz)
        next_ns = time.monotonic_ns()
        for _ in range(count):
            next_ns += period_ns
            wait_ns = next_ns - time.monotonic_ns()
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
            client.publish(channel, b"%d" % time.time_ns())
    client.close()


async def subscribe(url: str, count: int, paced: bool, started: asyncio.Event, timeout_s: float) -> PubSubResult:
    """Receive ``count`` messages; rate is over first→last message, latency from the stamp."""
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.pubsub_channel())
    started.set()
    latencies_ms: list[float] = []
    received = 0
    first_ns = last_ns = 0
    deadline = time.monotonic() + timeout_s
    try:
        while received < count and time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            now = time.time_ns()
            if received == 0:
                first_ns = now
            last_ns = now
            received += 1
            if paced:
                latencies_ms.append((now - int(message["data"])) / 1e6)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
    span_s = (last_ns - first_ns) / 1e9
    return PubSubResult(
        messages=received,
        rate_per_s=(received - 1) / span_s if span_s > 0 else float("nan"),
        latency_p50_ms=percentile(latencies_ms, 50),
        latency_p99_ms=percentile(latencies_ms, 99),
    )


async def _run(ctx: Context, mode: str, count: int) -> PubSubResult:
    url = ctx.cluster.new_db()
    started = asyncio.Event()
    receiving = asyncio.create_task(subscribe(url, count, mode == "paced", started, timeout_s=120.0))
    await started.wait()
    args = [url, mode, str(count), f"{ctx.sizes.rate_hz:g}"]
    publisher = ctx.cluster.start_module("publisher", "bench.pubsub", args, url)
    try:
        return await receiving
    finally:
        ctx.cluster.stop([publisher])


async def measure(ctx: Context) -> dict[str, float]:
    """The three modes, one after another."""
    sizes = ctx.sizes
    pipelined = await _run(ctx, "pipelined", sizes.pubsub_pipelined)
    single = await _run(ctx, "single", sizes.pubsub_single)
    paced = await _run(ctx, "paced", sizes.paced_count)
    return {
        "pipelined_msg_per_s": pipelined.rate_per_s,
        "single_msg_per_s": single.rate_per_s,
        "paced_p50_ms": paced.latency_p50_ms,
        "paced_p99_ms": paced.latency_p99_ms,
        "lost": (sizes.pubsub_pipelined - pipelined.messages)
        + (sizes.pubsub_single - single.messages)
        + (sizes.paced_count - paced.messages),
    }


def main() -> None:
    url, mode, count, rate_hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    publish(url, mode, count, rate_hz)


if __name__ == "__main__":
    main()
