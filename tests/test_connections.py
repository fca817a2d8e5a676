"""Connection hygiene over real sockets: request heads are bounded in size, count and time before
any route or auth runs, and a gateway at its connection limit still answers its health checks
and the documented 503.
"""

import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.shapes import assert_error
from tests.stack import Gateway, Stack, invoke

MB = 1024 * 1024


def connect(gateway: Gateway) -> socket.socket:
    address = urlsplit(gateway.url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def send_until_closed(sock: socket.socket, data: bytes) -> int:
    """Send ``data`` in pieces until the server stops taking them; return how many bytes went."""
    sent = 0
    try:
        for start in range(0, len(data), 65536):
            sock.sendall(data[start : start + 65536])
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


@contextmanager
def held(gateway: Gateway, count: int) -> Iterator[list[httpx.Response]]:
    """``count`` open SSE streams of a queued job (no worker runs it), held until the block ends."""
    job_id = invoke(gateway.url, "counter", {"count": 1})
    with ExitStack() as stack:
        streams = [
            stack.enter_context(httpx.stream("GET", f"{gateway.url}/jobs/{job_id}/events", timeout=30))
            for _ in range(count)
        ]
        assert all(s.status_code == 200 for s in streams)
        yield streams


@pytest.mark.e2e
def test_request_heads_are_bounded_before_auth(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_API_KEYS="k", FACTORY_MAX_HEADER_BYTES="8192", FACTORY_MAX_HEADERS="20")
    before = psutil.Process(gateway.popen.pid).memory_info().rss
    huge = b"GET /jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (50 * MB)
    with connect(gateway) as sock:
        sent = send_until_closed(sock, huge)
        assert answer(sock).startswith(b"HTTP/1.1 431 ")
    assert sent < 20 * MB  # cut off early, not read in full
    with connect(gateway) as sock:
        sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(50)) + b"\r\n")
        assert answer(sock).startswith(b"HTTP/1.1 431 ")
    assert psutil.Process(gateway.popen.pid).memory_info().rss - before < 20 * MB
    ok = httpx.get(f"{gateway.url}/jobs", headers={"Authorization": "Bearer k", "X-Fine": "a" * 4000})
    assert ok.status_code == 200


@pytest.mark.e2e
def test_slow_and_silent_connections_are_closed(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_HEADER_TIMEOUT_S="1", FACTORY_KEEPALIVE_TIMEOUT_S="1")
    with connect(gateway) as idle:  # a kept-alive connection with no next request
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(idle).startswith(b"HTTP/1.1 200 ")  # the answer, then the close once idle
    with connect(gateway) as silent, connect(gateway) as slowloris:
        slowloris.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:  # the attack itself: one more byte of the head now and then
                slowloris.sendall(b"a")
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() < deadline, "a head sent byte by byte kept its connection"
        assert answer(silent).startswith(b"HTTP/1.1 408 ")  # nothing sent at all: closed as well
    with connect(gateway) as half_body:  # a body that stops coming
        half_body.sendall(b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        half_body.sendall(b'Content-Length: 1000\r\n\r\n{"function_name": ')
        assert answer(half_body) == b""  # closed (a socket left open would time out here instead)
    assert "request head took over" in gateway.log()
    assert "Traceback" not in gateway.log()


@pytest.mark.e2e
def test_health_and_the_503_survive_connection_saturation(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_MAX_CONNECTIONS="20")
    with held(gateway, 20):
        assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
        refused = httpx.get(f"{gateway.url}/jobs", timeout=10)
        assert_error(refused, 503, "SERVICE_UNAVAILABLE")
        assert int(refused.headers["Retry-After"]) > 0
        gateway.wait_for_log("refused a connection")
    assert httpx.get(f"{gateway.url}/jobs", timeout=10).status_code == 200  # room again once they left


@pytest.mark.e2e
def test_one_client_address_cannot_take_every_connection(make_stack: Stack) -> None:
    gateway = make_stack.start_gateway(FACTORY_MAX_CONNECTIONS_PER_CLIENT="5")
    with held(gateway, 5):
        assert_error(httpx.get(f"{gateway.url}/jobs", timeout=10), 503, "SERVICE_UNAVAILABLE")
        assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{gateway.url}/jobs", timeout=10).status_code == 200


@pytest.mark.e2e
def test_the_gateway_raises_its_file_limit(make_stack: Stack) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the gateway inherits a low soft limit
    try:
        gateway = make_stack.start_gateway()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert psutil.Process(gateway.popen.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
