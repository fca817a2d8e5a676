"""A gateway's memory stays flat however long a job's log and however slow or late its readers:
each reader holds at most a page of the log (``FACTORY_READER_BUFFER_BYTES``), not the log.
"""

import threading
import time
from collections.abc import Callable

import httpx
import psutil
import pytest

from tests.stack import Gateway, Stack, invoke, wait_status

pytestmark = pytest.mark.churn

EVENTS = 50_000
PAYLOAD = "x" * 1000  # ~1.1 KB an event: a ~55 MB log
READERS = 10  # late ones and slow ones each
MB = 1024 * 1024
GROWTH_PER_READER = 3 * MB


class Reader(threading.Thread):
    """Reads an events stream: ``pace`` decides how (a late reader that stops, a slow one)."""

    def __init__(self, url: str, pace: Callable[[int], bool]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.pace = pace
        self.first_bytes = threading.Event()
        self.stop = threading.Event()
        self.received = 0

    def run(self) -> None:
        with httpx.stream("GET", self.url, timeout=120) as response:
            for chunk in response.iter_raw(16 * 1024):
                self.received += len(chunk)
                self.first_bytes.set()
                while not self.pace(self.received) and not self.stop.is_set():
                    self.stop.wait(0.05)
                if self.stop.is_set():
                    return


def rss(gateway: Gateway) -> int:
    return int(psutil.Process(gateway.popen.pid).memory_info().rss)


def open_streams(gateway: Gateway) -> float:
    for line in httpx.get(f"{gateway.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("factory_sse_streams_open "):
            return float(line.split()[1])
    raise AssertionError("no factory_sse_streams_open metric")


@pytest.mark.e2e
def test_late_and_slow_readers_hold_a_page_not_the_log(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": EVENTS, "payload": PAYLOAD})
    assert wait_status(gateway.url, job_id, {"finished"}, timeout_s=120)["last_event_id"] == EVENTS + 2
    url = f"{gateway.url}/jobs/{job_id}/events"
    whole = Reader(url, lambda _: True)  # one full read first: the baseline includes a warmed-up relay
    whole.run()
    assert whole.received > EVENTS * len(PAYLOAD)
    baseline = rss(gateway)
    limit = baseline + 2 * READERS * GROWTH_PER_READER

    started = time.monotonic()
    late = [Reader(url, lambda _: False) for _ in range(READERS)]  # read a little, then stop reading
    slow = [Reader(url, lambda got: got < 16 * 1024 + (time.monotonic() - started) * 200_000) for _ in range(READERS)]
    readers = late + slow
    peak = baseline
    try:
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 60
        while not all(reader.first_bytes.is_set() for reader in readers):
            peak = max(peak, rss(gateway))
            assert peak < limit, f"RSS grew from {baseline / MB:.0f} MB to {peak / MB:.0f} MB"
            assert time.monotonic() < deadline, "readers got no first bytes"
            time.sleep(0.1)
        while time.monotonic() - started < 8:  # the slow readers go on reading; the late ones hold their pages
            peak = max(peak, rss(gateway))
            assert peak < limit, f"RSS grew from {baseline / MB:.0f} MB to {peak / MB:.0f} MB"
            time.sleep(0.2)
        assert all(reader.received > 200_000 for reader in slow)
    finally:
        for reader in readers:
            reader.stop.set()
        for reader in readers:
            reader.join(30)
    deadline = time.monotonic() + 30
    while open_streams(gateway) > 0:
        assert time.monotonic() < deadline, "streams still open after their readers left"
        time.sleep(0.1)
    assert rss(gateway) < limit, "memory grew on after the readers left"
