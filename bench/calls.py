"""Driving the factory as a caller does: ``POST /invoke``, then the job's SSE stream; and
reading job records straight from Redis (through ``factory.store.keys``) to time whole batches.
"""

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis

from bench.caller import Caller
from factory.jobs import JobRecord
from factory.store import keys

PREFAB = "bench-kit"


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def events_path(job_id: str) -> str:
    return f"/jobs/{job_id}/events"


async def invoke(caller: Caller, gateway_url: str, function_name: str, inputs: dict[str, Any]) -> str:
    """Submit one call; returns the job id."""
    body = {"prefab_id": PREFAB, "function_name": function_name, "inputs": inputs}
    status, answer = await caller.post_json(f"{gateway_url}/invoke", body)
    if status != 202:
        raise RuntimeError(f"POST /invoke answered {status}: {answer[:300]!r}")
    return str(orjson.loads(answer)["job_id"])


async def final_records(client: aioredis.Redis, job_ids: list[str], timeout_s: float) -> list[JobRecord]:
    """Wait until every job has its terminal event, then return their records."""
    pending = list(job_ids)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(job_ids)} jobs did not end within {timeout_s:g} s")
        async with client.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.hexists(keys.job_key(job_id), "terminal")
            ended = await pipe.execute()
        pending = [job_id for job_id, done in zip(pending, ended, strict=True) if not done]
        if pending:
            await asyncio.sleep(0.02)
    async with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(keys.job_key(job_id))
        hashes = await pipe.execute()
    return [JobRecord.from_hash(fields) for fields in hashes]


@dataclass
class OrderCheck:
    """Checks that a job's progress events carry ``data.i`` = 1, 2, 3... with none missing or repeated."""

    expected: int
    seen: int = 0
    lost: int = 0
    repeated: int = 0
    out_of_order: int = 0
    stamps: list[tuple[int, int]] = field(default_factory=list)  # (stamped at yield, parsed), ns

    def __call__(self, seq: int, event: dict[str, Any], now_ns: int) -> None:
        if event.get("type") != "progress":
            return
        data = event["data"]
        index = int(data["i"])
        if index == self.seen + 1:
            self.seen = index
        elif index <= self.seen:
            self.repeated += 1
        else:
            self.out_of_order += 1
            self.lost += index - self.seen - 1
            self.seen = index
        stamp = data.get("t_ns")
        if stamp is not None:
            self.stamps.append((int(stamp), now_ns))

    def latencies_ms(self, since_ns: int = 0) -> list[float]:
        """Yield→parse latency of the stamped events yielded at or after ``since_ns``.

        Events yielded before the reader's stream started reach it as a replay of the log,
        so their latency measures when the reader joined, not the relay.
        """
        return [(parsed - stamp) / 1e6 for stamp, parsed in self.stamps if stamp >= since_ns]

    @property
    def missing(self) -> int:
        """Events never received: skipped ones plus those after the last one seen."""
        return self.lost + max(self.expected - self.seen, 0)


async def submit_many(
    caller: Caller,
    gateway_urls: list[str],
    function_name: str,
    inputs: dict[str, Any],
    count: int,
    concurrency: int = 64,
) -> list[str]:
    """Submit ``count`` identical calls, spread over the gateways, ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> str:
        async with gate:
            return await invoke(caller, gateway_urls[n % len(gateway_urls)], function_name, inputs)

    return list(await asyncio.gather(*(one(n) for n in range(count))))
