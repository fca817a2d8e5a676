"""Many idle SSE streams held open by the bench, and probes of how fast a new one starts.

Used on the gateway and on the no-factory baseline alike, so their figures compare.
"""

import asyncio
import time
from collections.abc import Sequence

from bench.procs import rss_kb
from bench.results import percentile
from bench.sse_client import SSEProtocol, open_stream

OPEN_CONCURRENCY = 100
START_TIMEOUT_S = 30.0


async def _open_started(host: str, port: int, path: str) -> SSEProtocol:
    """A stream whose body has begun; a refused one (any status but 200) fails the scenario, as it
    would otherwise count as a stream held open."""
    protocol = await open_stream(host, port, path)
    await asyncio.wait_for(asyncio.shield(protocol.started), START_TIMEOUT_S)
    if protocol.stats.status != 200:
        raise RuntimeError(f"a stream of {path} was refused: HTTP {protocol.stats.status} {protocol.stats.error or ''}")
    return protocol


async def open_idle(host: str, port: int, paths: Sequence[str]) -> list[SSEProtocol]:
    """Open one stream per path (at most :data:`OPEN_CONCURRENCY` opening at once), each started."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one(path: str) -> SSEProtocol:
        async with gate:
            return await _open_started(host, port, path)

    return list(await asyncio.gather(*(one(p) for p in paths)))


async def probe_starts_ms(host: str, port: int, path: str, probes: int) -> list[float]:
    """Open ``probes`` new streams one after another: ms from connect to the first body bytes."""
    times: list[float] = []
    for _ in range(probes):
        began = time.perf_counter()
        protocol = await _open_started(host, port, path)
        times.append((time.perf_counter() - began) * 1000)
        protocol.close()
        await asyncio.sleep(0.01)
    return times


async def settle_rss_kb(pid: int, settle_s: float = 2.0) -> int:
    """The process's RSS after a pause (lets freed buffers go and late work finish)."""
    await asyncio.sleep(settle_s)
    return rss_kb(pid)


def close_all(protocols: list[SSEProtocol]) -> None:
    for protocol in protocols:
        protocol.close()


def summarize(rss_before_kb: int, rss_after_kb: int, streams: int, start_ms: list[float]) -> dict[str, float]:
    return {
        "streams": streams,
        "rss_before_kb": rss_before_kb,
        "rss_after_kb": rss_after_kb,
        "rss_per_stream_kb": (rss_after_kb - rss_before_kb) / streams,
        "new_stream_p50_ms": percentile(start_ms, 50),
        "new_stream_max_ms": max(start_ms) if start_ms else float("nan"),
    }
