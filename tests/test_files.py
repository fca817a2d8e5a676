"""v3.0 files end to end: uploads and URLs into data/inputs/<group>/, data/outputs/ back as URLs.

Real gateway and worker processes, a real redis-server, a loopback HTTP server for URL inputs
and a real S3-compatible server (moto's, started as its own process on loopback).
"""

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from factory_cli.embedded_redis import free_port
from tests.stack import Gateway, Received, Stack, read_events

pytestmark = pytest.mark.e2e

BUCKET = "factory-files"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


# --- helpers -------------------------------------------------------------------------------


def upload(gateway_url: str, name: str, content: bytes, content_type: str = "text/plain") -> dict[str, Any]:
    response = httpx.post(f"{gateway_url}/files", files={"file": (name, content, content_type)}, timeout=30)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def run(gateway_url: str, function_name: str, files: dict[str, list[str]], **inputs: Any) -> tuple[str, list[Received]]:
    response = httpx.post(
        f"{gateway_url}/invoke", json={"function_name": function_name, "inputs": inputs, "files": files}, timeout=10
    )
    assert response.status_code == 202, response.text
    job_id = str(response.json()["job_id"])
    status, events = read_events(f"{gateway_url}/jobs/{job_id}/events")
    assert status == 200
    return job_id, events


def call(gateway_url: str, function_name: str, **inputs: Any) -> dict[str, Any]:
    """The seed's form of a non-streaming function: the result once the job ends."""
    response = httpx.post(f"{gateway_url}/invoke/{function_name}", json={"inputs": inputs}, timeout=30)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


# --- a loopback web server for http(s) URL inputs ------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server serving a folder: (base URL, folder)."""
    root = tmp_path_factory.mktemp("web")
    handler = lambda *args: _Handler(*args, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join(5)


# --- a real S3-compatible server -----------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible HTTP server as its own process on a loopback port; its endpoint URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **S3_CREDENTIALS},
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if popen.poll() is not None or time.monotonic() > deadline:
                popen.kill()
                raise RuntimeError(f"moto server did not start:\n{log_path.read_text()}") from None
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        popen.terminate()
        popen.wait(10)


def s3(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# --- uploads in, outputs out ---------------------------------------------------------------


def test_uploaded_file_runs_process_large_file_and_its_output_downloads(gateway: Gateway) -> None:
    lines = [f"line {i} has five words" for i in range(250)]
    content = ("\n".join(lines) + "\n").encode()
    uploaded = upload(gateway.url, "notes.txt", content)
    assert uploaded["name"] == "notes.txt" and uploaded["size"] == len(content)
    assert uploaded["content_type"] == "text/plain" and uploaded["ref"] == f"upload://{uploaded['file_id']}"

    job_id, events = run(gateway.url, "process_large_file", {"input": [uploaded["ref"]]})
    types = [e.type for e in events]
    assert types == ["start", "progress", "progress", "files", "done"], events
    assert events[0].event["data"] == {"file": "notes.txt", "total_lines": 250}
    url = f"{gateway.url}/jobs/{job_id}/files/notes.summary.json"
    assert events[3].event["data"] == {"output": [url]}

    download = httpx.get(url, timeout=10)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/json"
    assert int(download.headers["content-length"]) == len(download.content)
    assert download.json() == {"file": "notes.txt", "lines": 250, "words": 1250, "chars": len(content) - 250}

    job = httpx.get(f"{gateway.url}/jobs/{job_id}", timeout=5).json()
    assert job["status"] == "finished" and job["files"] == {"output": [url]}


def test_non_streaming_outputs_are_in_the_result(gateway: Gateway) -> None:
    result = call(gateway.url, "write_outputs", names=["b.csv", "sub/a.txt"], text="x,y\n")
    job_id = result["job_id"]
    assert result["status"] == "SUCCESS" and result["output"] == {"written": ["b.csv", "sub/a.txt"]}
    base = f"{gateway.url}/jobs/{job_id}/files"
    assert result["files"] == {"output": [f"{base}/b.csv", f"{base}/sub/a.txt"]}
    csv = httpx.get(f"{base}/b.csv", timeout=10)
    assert csv.status_code == 200 and csv.content == b"x,y\n"
    assert csv.headers["content-type"].startswith("text/csv") and csv.headers["content-length"] == "4"
    assert httpx.get(f"{base}/sub/a.txt", timeout=10).content == b"x,y\n"
    _, events = read_events(f"{gateway.url}/jobs/{job_id}/events")
    assert [e.type for e in events] == ["files", "done"]


def test_function_without_outputs_has_no_files(gateway: Gateway) -> None:
    result = call(gateway.url, "write_outputs", names=[])
    assert result["files"] == {}
    assert httpx.get(f"{gateway.url}/jobs/{result['job_id']}", timeout=5).json()["files"] is None


def test_groups_are_materialised_from_uploads_and_urls(gateway: Gateway, web: tuple[str, Path]) -> None:
    base, root = web
    (root / "a.txt").write_text("from the web")
    (root / "report 1.md").write_text("# spaced")
    uploaded = upload(gateway.url, "a.txt", b"uploaded")
    _, events = run(
        gateway.url,
        "list_inputs",
        {"input": [f"{base}/a.txt", uploaded["ref"]], "extra": [f"{base}/report%201.md"]},
    )
    assert [e.type for e in events] == ["start", "done"], events
    assert events[-1].event["data"] == {
        "input": {"a.txt": "from the web", "a-2.txt": "uploaded"},
        "extra": {"report 1.md": "# spaced"},
    }


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("http://127.0.0.1:{free}/gone.txt", "ConnectError"),
        ("{web}/missing.txt", "answered 404"),
        ("upload://0123456789abcdef0123456789abcdef", "unknown or expired"),
        ("s3://some-bucket/key.txt", "S3-compatible store"),
    ],
)
def test_unfetchable_input_ends_the_job_before_the_function_runs(
    gateway: Gateway, web: tuple[str, Path], ref: str, reason: str
) -> None:
    ref = ref.format(free=free_port(), web=web[0])
    job_id, events = run(gateway.url, "list_inputs", {"input": [ref]})
    assert [e.type for e in events] == ["error"], events
    assert events[0].event["error_code"] == "INPUT_FILE_ERROR"
    assert reason in events[0].event["data"] and "files.input[0]" in events[0].event["data"]
    job = httpx.get(f"{gateway.url}/jobs/{job_id}", timeout=5).json()
    assert job["status"] == "failed" and job["error"]["code"] == "INPUT_FILE_ERROR"


# --- validation and traversal --------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "fields"),
    [
        ({}, {"files.input"}),
        ({"input": []}, {"files.input"}),
        ({"input": ["upload://" + "a" * 32] * 3}, {"files.input"}),
        ({"input": ["upload://" + "a" * 32], "other": ["upload://" + "b" * 32]}, {"files.other"}),
        ({"input": ["ftp://host/x"]}, {"files.input[0]"}),
        ({"input": ["/etc/passwd"]}, {"files.input[0]"}),
        ({"input": ["upload://../../etc"]}, {"files.input[0]"}),
        ({"input": ["http:///no-host"]}, {"files.input[0]"}),
    ],
)
def test_file_groups_are_validated_before_enqueue(
    gateway: Gateway, files: dict[str, list[str]], fields: set[str]
) -> None:
    response = httpx.post(f"{gateway.url}/invoke", json={"function_name": "list_inputs", "files": files}, timeout=10)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert {d["field"] for d in error["details"]} == fields


def test_output_file_group_is_not_callable(gateway: Gateway) -> None:
    files = {"output": ["upload://" + "a" * 32]}
    response = httpx.post(
        f"{gateway.url}/invoke", json={"function_name": "write_outputs", "inputs": {"names": []}, "files": files}
    )
    assert_error(response, 422, "VALIDATION_ERROR")


def test_upload_names_are_sanitised(gateway: Gateway) -> None:
    uploaded = upload(gateway.url, "../../etc/cron.d/evil.sh", b"#!/bin/sh\n")
    assert uploaded["name"] == "evil.sh"
    assert upload(gateway.url, "..", b"x")["name"] == "file"
    assert upload(gateway.url, "C:\\Users\\me\\.profile", b"x")["name"] == "profile"
    assert upload(gateway.url, "résumé 2024.pdf", b"x", "application/pdf")["name"] == "résumé 2024.pdf"
    _, events = run(gateway.url, "list_inputs", {"input": [uploaded["ref"]]})
    assert events[-1].event["data"] == {"input": {"evil.sh": "#!/bin/sh\n"}}


def test_upload_needs_one_multipart_file(gateway: Gateway) -> None:
    assert_error(httpx.post(f"{gateway.url}/files", content=b"raw", timeout=10), 400, "BAD_REQUEST")
    no_file = {"field": (None, "just a value")}
    assert_error(httpx.post(f"{gateway.url}/files", files=no_file, timeout=10), 400, "BAD_REQUEST")
    two = [("a", ("a.txt", b"1", "text/plain")), ("b", ("b.txt", b"2", "text/plain"))]
    assert_error(httpx.post(f"{gateway.url}/files", files=two, timeout=10), 400, "BAD_REQUEST")


def test_output_names_cannot_leave_the_job(gateway: Gateway) -> None:
    result = call(gateway.url, "write_outputs", names=["a.txt"])
    job_id = result["job_id"]
    raw_paths = [
        f"/jobs/{job_id}/files/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/jobs/{job_id}/files/%2Fetc%2Fpasswd",
        f"/jobs/{job_id}/files/sub%2F..%2Fa.txt",
        f"/jobs/{job_id}/files/A.TXT",
        "/jobs/..%2F..%2Fetc/files/passwd",
        f"/jobs/{'f' * 32}/files/a.txt",
    ]
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for raw in raw_paths:
            response = client.get(httpx.URL(gateway.url + raw))
            assert response.status_code == 404, (raw, response.text)
            assert b"root:" not in response.content
        # The decoded name reaches the route, which only looks it up among the job's stored files.
        assert "has no output file '../../../etc/passwd'" in client.get(httpx.URL(gateway.url + raw_paths[0])).text
        assert client.get(f"/jobs/{job_id}/files/a.txt").content == b"hello"


def test_symlink_output_is_refused(gateway: Gateway) -> None:
    result = call(gateway.url, "symlink_output")
    assert result["status"] == "FAILED" and result["files"] == {}
    assert result["error"]["code"] == "OUTPUT_FILE_ERROR" and "symbolic link" in result["error"]["message"]
    response = httpx.get(f"{gateway.url}/jobs/{result['job_id']}/files/passwd", timeout=10)
    assert response.status_code == 404 and b"root:" not in response.content


# --- limits and failures -------------------------------------------------------------------


def test_size_limits_per_file_and_per_job(make_stack: Stack, web: tuple[str, Path]) -> None:
    limits = {"FACTORY_MAX_FILE_BYTES": "1000", "FACTORY_MAX_JOB_FILE_BYTES": "1500"}
    gateway = make_stack.start_gateway(**limits)
    make_stack.env["FACTORY_PUBLIC_URL"] = gateway.url
    make_stack.start_worker(**limits)
    response = httpx.post(f"{gateway.url}/files", files={"file": ("big.bin", b"x" * 1001)}, timeout=10)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        + b"x" * 1001
        + b"\r\n--b--\r\n"
    )
    chunked = httpx.post(
        f"{gateway.url}/files",
        content=iter([body[:500], body[500:]]),  # no Content-Length: cut off while it streams
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=10,
    )
    assert_error(chunked, 413, "PAYLOAD_TOO_LARGE")

    first, second = upload(gateway.url, "a.txt", b"a" * 900), upload(gateway.url, "b.txt", b"b" * 900)
    _, events = run(gateway.url, "list_inputs", {"input": [first["ref"]], "extra": [second["ref"]]})
    assert [(e.type, e.event.get("error_code")) for e in events] == [("error", "INPUT_FILE_ERROR")]
    assert "1500 bytes per job" in events[0].event["data"]

    base, root = web
    (root / "big.txt").write_bytes(b"z" * 1200)
    _, events = run(gateway.url, "list_inputs", {"input": [f"{base}/big.txt"]})
    assert [(e.type, e.event.get("error_code")) for e in events] == [("error", "INPUT_FILE_ERROR")]
    assert "larger than the limit of 1000 bytes per file" in events[0].event["data"]

    result = call(gateway.url, "write_outputs", names=["a.txt"], text="y" * 1001)
    assert result["status"] == "FAILED" and result["error"]["code"] == "OUTPUT_FILE_ERROR"
    result = call(gateway.url, "write_outputs", names=["a.txt", "b.txt"], text="y" * 800)
    assert result["status"] == "FAILED" and result["error"]["code"] == "OUTPUT_FILE_ERROR"
    assert call(gateway.url, "write_outputs", names=["a.txt"], text="y" * 1000)["status"] == "SUCCESS"


def test_failed_output_upload_ends_with_output_file_error_and_keeps_the_events(make_stack: Stack) -> None:
    blocker = make_stack.workdir / "not-a-directory"
    blocker.write_text("a file where the storage directory should be")
    gateway = make_stack.start_gateway()
    make_stack.start_worker(FACTORY_STORAGE_URL=str(blocker / "files"), FACTORY_PUBLIC_URL=gateway.url)
    job_id, events = run(gateway.url, "stream_outputs", {}, count=3)
    assert [e.type for e in events] == ["start", "progress", "progress", "progress", "error"]
    assert events[-1].event["error_code"] == "OUTPUT_FILE_ERROR" and "count.txt" in events[-1].event["data"]
    job = httpx.get(f"{gateway.url}/jobs/{job_id}", timeout=5).json()
    assert job["status"] == "failed" and job["files"] is None and job["last_event_id"] == 5


# --- S3 ------------------------------------------------------------------------------------


def test_s3_storage_round_trip(make_stack: Stack, s3_server: str) -> None:
    client = s3(s3_server)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="caller/data/in.txt", Body=b"one\ntwo\n")
    make_stack.env.update(
        {"FACTORY_STORAGE_URL": f"s3://{BUCKET}/factory", "FACTORY_S3_ENDPOINT_URL": s3_server, **S3_CREDENTIALS}
    )
    gateway = make_stack.start_gateway()
    make_stack.env["FACTORY_PUBLIC_URL"] = gateway.url
    make_stack.start_worker()

    uploaded = upload(gateway.url, "notes.txt", b"a b c\nd e\n")
    stored = client.list_objects_v2(Bucket=BUCKET, Prefix="factory/uploads/")["Contents"]
    assert [o["Key"] for o in stored] == [f"factory/uploads/{uploaded['file_id']}/notes.txt"]

    job_id, events = run(gateway.url, "process_large_file", {"input": [uploaded["ref"]]})
    assert [e.type for e in events] == ["start", "files", "done"], events
    url = events[1].event["data"]["output"][0]
    download = httpx.get(url, timeout=10)
    assert download.status_code == 200 and download.headers["content-type"] == "application/json"
    assert download.json()["words"] == 5
    key = f"factory/outputs/{job_id}/notes.summary.json"
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == download.content

    _, events = run(gateway.url, "list_inputs", {"input": [f"s3://{BUCKET}/caller/data/in.txt"]})
    assert events[-1].event["data"] == {"input": {"in.txt": "one\ntwo\n"}}
    _, events = run(gateway.url, "list_inputs", {"input": [f"s3://{BUCKET}/caller/missing.txt"]})
    assert events[-1].event["error_code"] == "INPUT_FILE_ERROR" and "does not exist" in events[-1].event["data"]
