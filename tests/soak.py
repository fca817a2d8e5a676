"""``make soak``: a few minutes of hostile load on one machine, then a check that nothing grew.

Loopback only, bounded in count and time. Against a real Redis, one measured gateway and two
workers, rounds of: floods (jobs yielding thousands of events as fast as they can), slow readers
and late readers, idle and half-sent connections, a worker's horse killed at random, and once a
Redis restart. Before and after (once the load stopped and the retention passed) it records the
gateway's RSS and open descriptors and Redis' key count and memory, prints them, and exits 1 when
one grew past its bound. ``python -m tests.soak --duration 180``.
"""

import argparse
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import redis

from factory.store import keys
from factory_cli.embedded_redis import EmbeddedRedis, free_port
from tests.stack import Gateway, Proc, Stack, invoke

RETENTION_S = 15
MB = 1024 * 1024
# Growth allowed between the start and the end figures.
BOUNDS = {"gateway_rss_mb": 40.0, "gateway_fds": 10, "redis_keys": 5, "redis_memory_mb": 5.0}


@dataclass
class Figures:
    gateway_rss_mb: float
    gateway_fds: int
    redis_keys: int
    redis_memory_mb: float


# Locks the reapers and sweepers take every few seconds, each with a TTL: not a job's, not counted.
LOCKS = {keys.reaper_lock_key().encode(), keys.sweep_lock_key().encode()}


def lasting_keys(client: redis.Redis) -> list[bytes]:
    return sorted(key for key in client.scan_iter(count=1000) if key not in LOCKS)


def figures(gateway: Gateway, client: redis.Redis) -> Figures:
    process = psutil.Process(gateway.popen.pid)
    memory = int(client.info("memory")["used_memory"])
    return Figures(process.memory_info().rss / MB, process.num_fds(), len(lasting_keys(client)), memory / MB)


def read(url: str, *, bytes_per_s: float | None = None, stop_after: int | None = None) -> None:
    """Read a stream: whole, at a paced rate, or only its first ``stop_after`` bytes then hold and leave."""
    started, got = time.monotonic(), 0
    try:
        with httpx.stream("GET", url, timeout=30) as response:
            for chunk in response.iter_raw(16 * 1024):
                got += len(chunk)
                if stop_after is not None and got >= stop_after:
                    time.sleep(3)  # hold the stream unread for a moment, as a stalled client does
                    return
                if bytes_per_s is not None:
                    time.sleep(max(0.0, got / bytes_per_s - (time.monotonic() - started)))
                    if time.monotonic() - started > 10:
                        return
    except httpx.HTTPError:
        pass  # a stream cut by the gateway (a slow reader) or a Redis restart: expected here


def idle_connections(gateway: Gateway, count: int) -> None:
    """Open ``count`` connections that send nothing or half a head, and wait until the gateway closed them."""
    address = urlsplit(gateway.url)
    sockets = []
    for index in range(count):
        sock = socket.create_connection((address.hostname, address.port), timeout=30)
        if index % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
        sockets.append(sock)
    for sock in sockets:
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
        sock.close()


def kill_a_horse(workers: list[Proc]) -> None:
    worker = random.choice(workers)
    horses = psutil.Process(worker.popen.pid).children()
    if horses:
        try:
            os.kill(random.choice(horses).pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def one_round(gateway: Gateway, workers: list[Proc]) -> None:
    """A flood with its readers (live, slow, late, stalled), idle connections and a killed horse."""
    floods = [invoke(gateway.url, "counter", {"count": 3000, "payload": "x" * 200}) for _ in range(3)]
    threads = [threading.Thread(target=idle_connections, args=(gateway, 50))]
    for job_id in floods:
        url = f"{gateway.url}/jobs/{job_id}/events"
        threads += [
            threading.Thread(target=read, args=(url,)),
            threading.Thread(target=read, args=(url,), kwargs={"bytes_per_s": 50_000}),
            threading.Thread(target=read, args=(url,), kwargs={"stop_after": 64 * 1024}),
        ]
    for thread in threads:
        thread.start()
    kill_a_horse(workers)
    for thread in threads:
        thread.join(60)
    for job_id in floods:  # late readers, after the job ended
        read(f"{gateway.url}/jobs/{job_id}/events")


def settle(client: redis.Redis, timeout_s: float) -> None:
    """Wait for the retention to pass: until no key with a TTL is left (only the shared, lasting ones)."""
    deadline = time.monotonic() + timeout_s
    while any(client.ttl(key) >= 0 for key in lasting_keys(client)) and time.monotonic() < deadline:
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        server = EmbeddedRedis(workdir / "redis", port).start()
        stack = Stack(f"redis://127.0.0.1:{port}/0", workdir)
        stack.env.update({"FACTORY_RETENTION_S": str(RETENTION_S), "FACTORY_HEADER_TIMEOUT_S": "2"})
        stack.env.update({"FACTORY_READER_SEND_TIMEOUT_S": "5"})
        try:
            gateway = stack.start_gateway()
            workers = [stack.start_worker(), stack.start_worker()]
            client = redis.Redis.from_url(stack.redis_url)
            one_round(gateway, workers)  # warm-up: imports, pools and caches are part of the start
            settle(client, RETENTION_S + 30)
            start = figures(gateway, client)
            ends = time.monotonic() + args.duration
            rounds, restarted = 0, False
            while time.monotonic() < ends:
                one_round(gateway, workers)
                rounds += 1
                if not restarted and time.monotonic() > ends - args.duration / 2:
                    server.stop()
                    time.sleep(1)  # the outage itself, a second long
                    server = EmbeddedRedis(workdir / "redis", port).start()
                    restarted = True
            settle(client, RETENTION_S + 60)
            end = figures(gateway, client)
            lasting = [key.decode() for key in lasting_keys(client)]
        finally:
            stack.stop()
            server.stop()
    report = {"rounds": rounds, "redis_restarted": restarted, "start": asdict(start), "end": asdict(end)}
    report["lasting_keys"] = lasting
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    grown = [
        f"{name} grew from {getattr(start, name):g} to {getattr(end, name):g} (bound +{bound:g})"
        for name, bound in BOUNDS.items()
        if getattr(end, name) - getattr(start, name) > bound
    ]
    for line in grown:
        sys.stdout.write(f"FAIL: {line}\n")
    sys.stdout.write("soak: passed\n" if not grown else "soak: failed\n")
    return 1 if grown else 0


if __name__ == "__main__":
    sys.exit(main())
