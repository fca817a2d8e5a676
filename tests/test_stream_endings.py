"""Streams the server ends on purpose end cleanly: a last SSE comment saying why, then the proper end
of the chunked body, and nothing in the gateway's log above a warning.
"""

import re
import socket
import threading
from urllib.parse import urlsplit

import httpx
import pytest

from tests.stack import Gateway, Stack, invoke, wait_status
from tests.test_faults import RestartableRedis, restartable  # noqa: F401  (the fixture)

ERROR_LINE = re.compile(r'"level":\s*"(error|critical)"|Traceback')


def assert_no_error_logged(gateway: Gateway) -> None:
    bad = [line for line in gateway.log().splitlines() if ERROR_LINE.search(line)]
    assert bad == [], "\n".join(bad[:20])


@pytest.mark.e2e
def test_a_reader_too_slow_to_read_is_cut_with_a_clean_end(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_READER_SEND_TIMEOUT_S="2")
    make_stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 30_000, "payload": "x" * 1000})  # more than socket buffers hold
    wait_status(gateway.url, job_id, {"finished"}, timeout_s=120)
    address = urlsplit(gateway.url)
    with socket.create_connection((address.hostname, address.port), timeout=60) as sock:
        sock.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        gateway.wait_for_log("cut a slow reader")  # the reader read nothing: the gateway gave up on it
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b": this reader took too long to read; reconnect with Last-Event-ID" in received[-1000:]
    assert received.endswith(b"\r\n0\r\n\r\n")  # the end of the chunked body: a complete response
    assert_no_error_logged(gateway)


@pytest.mark.churn
@pytest.mark.e2e
def test_a_stream_outliving_a_redis_outage_ends_cleanly(restartable: tuple[RestartableRedis, Stack]) -> None:  # noqa: F811
    server, stack = restartable
    stack.env["FACTORY_REDIS_OUTAGE_S"] = "2"
    gateway = stack.start_gateway()
    stack.start_worker()
    job_id = invoke(gateway.url, "counter", {"count": 1000, "delay_s": 0.05})
    lines: list[str] = []
    failure: list[BaseException] = []
    started = threading.Event()

    def follow() -> None:
        try:
            with httpx.stream("GET", f"{gateway.url}/jobs/{job_id}/events", timeout=60) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    started.set()
        except httpx.HTTPError as exc:  # a body cut off mid-way shows here
            failure.append(exc)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert started.wait(30)
    server.stop()
    reader.join(90)
    assert not reader.is_alive(), "the stream never ended"
    server.start()
    assert failure == []
    assert ": the event store is unreachable; reconnect with Last-Event-ID" in lines
    assert_no_error_logged(gateway)
