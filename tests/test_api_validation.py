"""CONTRACT §3 from the caller's side: every bad call is refused before anything is enqueued,
with the contract's error shape. In-process (the lifespan runs) against the session's real Redis.
"""

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from rq.job import Job
from rq.serializers import JSONSerializer

from factory.settings import Settings
from factory_cli.embedded_redis import free_port
from gateway.app import create_app
from gateway.deps import _state
from tests.shapes import assert_error
from tests.stack import Stack

GOOD = {"function_name": "typed", "inputs": {"text": "hello"}}


def fields_of(error: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in error["details"]}


class Store(redis.Redis):
    """The test's database, and the keys it held once the gateway started (its deployments)."""

    baseline: set[bytes]

    def unchanged(self) -> bool:
        """Whether nothing was written since the gateway started: no job, no queue entry."""
        return set(self.keys()) == self.baseline


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def store(settings: Settings, client: TestClient) -> Iterator[Store]:
    assert settings.redis_url
    connection = Store.from_url(settings.redis_url)
    connection.baseline = set(connection.keys())
    yield connection
    connection.close()


def enqueued_payload(store: Store, job_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = Job.fetch(job_id, connection=store, serializer=JSONSerializer).args[0]
    return payload


@pytest.mark.parametrize(
    ("prefab_id", "function_name"),
    [("no-such-prefab", "typed"), ("behaviours", "no_such_function"), (None, "no_such_function")],
)
def test_unknown_prefab_or_function_is_404(
    client: TestClient, store: Store, prefab_id: str | None, function_name: str
) -> None:
    response = client.post("/invoke", json={"prefab_id": prefab_id, "function_name": function_name, "inputs": {}})
    assert_error(response, 404, "NOT_FOUND")
    assert store.unchanged()


def test_every_bad_field_is_named(client: TestClient, store: Store) -> None:
    inputs = {
        "text": 5,
        "mode": "turbo",
        "ratio": "high",
        "count": 1.5,
        "flag": "yes",
        "tags": ["a", 2, "c", None],
        "options": {"level": "max"},
        "bogus": 1,
    }
    response = client.post("/invoke", json={"function_name": "typed", "inputs": inputs})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert fields_of(error) == {
        "inputs.text",
        "inputs.mode",
        "inputs.ratio",
        "inputs.count",
        "inputs.flag",
        "inputs.tags[1]",
        "inputs.tags[3]",
        "inputs.options.level",
        "inputs.bogus",
    }
    assert all(isinstance(detail["message"], str) and detail["message"] for detail in error["details"])
    assert store.unchanged()


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({}, "inputs.text"),  # missing required
        ({"text": "a", "mode": "FAST"}, "inputs.mode"),  # enum is exact
        ({"text": "a", "count": True}, "inputs.count"),  # a boolean is not an integer
        ({"text": "a", "ratio": False}, "inputs.ratio"),
        ({"text": "a", "flag": 1}, "inputs.flag"),
        ({"text": "a", "tags": "a,b"}, "inputs.tags"),
        ({"text": "a", "options": ["level", 1]}, "inputs.options"),
        ({"text": "a", "__class__": {}}, "inputs.__class__"),
    ],
)
def test_one_bad_input_is_refused(client: TestClient, inputs: dict[str, Any], field: str) -> None:
    response = client.post("/invoke", json={"function_name": "typed", "inputs": inputs})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert fields_of(error) == {field}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": {}}, "function_name"),
        ({"function_name": 7, "inputs": {}}, "function_name"),
        ({"function_name": "typed", "inputs": ["text"]}, "inputs"),
        ({"function_name": "typed", "inputs": {}, "surprise": True}, "surprise"),
        ({"function_name": "typed", "inputs": {}, "files": {"input": "s3://x"}}, "files.input"),
    ],
)
def test_body_not_matching_the_api_is_422(client: TestClient, body: dict[str, Any], field: str) -> None:
    error = assert_error(client.post("/invoke", json=body), 422, "VALIDATION_ERROR")
    assert fields_of(error) == {field}


@pytest.mark.parametrize("path", ["/invoke", "/invoke/typed", "/invoke/behaviours/typed"])
def test_both_inputs_and_parameters_is_422(client: TestClient, store: Store, path: str) -> None:
    body = {"inputs": {"text": "a"}, "parameters": {"text": "b"}}
    if path == "/invoke":
        body["function_name"] = "typed"
    assert_error(client.post(path, json=body), 422, "VALIDATION_ERROR")
    assert store.unchanged()


@pytest.mark.parametrize("content", [b"{", b'{"function_name": "typed",}', b"\xff\xfe", b"[" * 100_000, b"nul"])
def test_malformed_json_is_400(client: TestClient, store: Store, content: bytes) -> None:
    for path in ("/invoke", "/invoke/typed"):
        response = client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert_error(response, 400, "BAD_REQUEST")
    assert store.unchanged()


@pytest.mark.parametrize(
    "inputs",
    [
        b'{"text": NaN}',
        b'{"text": "a", "ratio": Infinity}',
        b'{"text": "a", "ratio": -Infinity}',
        b'{"text": "\\ud800"}',  # a lone surrogate: escaped legally, yet not Unicode
        b'{"text": "a", "\\udfff": 1}',
        b'{"text": "a", "options": {"level": 1, "\\ud800x": [NaN]}}',
    ],
)
def test_what_json_forbids_but_parsers_accept_is_400(client: TestClient, store: Store, inputs: bytes) -> None:
    for path, head in (("/invoke", b'{"function_name": "typed", "inputs": '), ("/invoke/typed", b'{"inputs": ')):
        response = client.post(path, content=head + inputs + b"}", headers={"Content-Type": "application/json"})
        error = assert_error(response, 400, "BAD_REQUEST")
        assert fields_of(error) == {"inputs"}
    files = b'{"function_name": "typed", "inputs": {"text": "a"}, "files": {"\\ud800": []}}'
    response = client.post("/invoke", content=files, headers={"Content-Type": "application/json"})
    assert fields_of(assert_error(response, 400, "BAD_REQUEST")) == {"files"}
    assert store.unchanged()


def test_malformed_json_says_where(client: TestClient) -> None:
    response = client.post("/invoke", content=b'{"function_name": }', headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "BAD_REQUEST")
    assert error["details"][0]["field"] == "body" and "character 18" in error["details"][0]["message"]


def test_body_that_is_not_json_typed_is_415(client: TestClient) -> None:
    response = client.post("/invoke", content=b"function_name=typed", headers={"Content-Type": "text/plain"})
    assert "application/json" in assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")["message"]


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_is_413(settings: Settings, store: Store, chunked: bool) -> None:
    small = settings.model_copy(update={"max_body_bytes": 1000})
    body = b'{"function_name": "typed", "inputs": {"text": "' + b"x" * 2000 + b'"}}'
    with TestClient(create_app(small)) as client:
        if chunked:  # no Content-Length: the limit counts the bytes as they arrive
            response = client.post("/invoke", content=iter([body[:600], body[600:]]))
            assert "content-length" not in response.request.headers
        else:
            response = client.post("/invoke", content=body, headers={"Content-Type": "application/json"})
        assert_error(response, 413, "PAYLOAD_TOO_LARGE")
        assert store.unchanged()
        assert client.post("/invoke", json=GOOD).status_code == 202  # under the limit: fine


def test_defaults_are_filled_in_before_enqueue(client: TestClient, store: Store) -> None:
    body = {"prefab_id": "behaviours", "function_name": "typed", "inputs": {"text": "a"}}
    response = client.post("/invoke", json=body)
    assert response.status_code == 202, response.text
    payload = enqueued_payload(store, response.json()["job_id"])
    assert payload["inputs"] == {"text": "a", "mode": "fast"}  # no default given: left out, the function's own applies


def test_parameters_is_the_ecosystem_name_for_inputs(client: TestClient, store: Store) -> None:
    response = client.post("/invoke", json={"function_name": "typed", "parameters": {"text": "p", "count": 3}})
    assert response.status_code == 202, response.text
    assert enqueued_payload(store, response.json()["job_id"])["inputs"] == {"text": "p", "mode": "fast", "count": 3}


def test_prefab_id_may_be_omitted_when_the_function_is_unique(client: TestClient) -> None:
    response = client.post("/invoke", json=GOOD)
    assert response.status_code == 202, response.text
    job = client.get(f"/jobs/{response.json()['job_id']}").json()
    assert (job["prefab_id"], job["function_name"], job["status"]) == ("behaviours", "typed", "queued")


@pytest.mark.parametrize(
    "prefab_id",
    ["../x", "..", "%2e%2e", "a/b", "../behaviours", "behaviours/../behaviours", "__import__", "__init__", "os.path",
     "behaviours.typed", "/etc/passwd", "prefabs/behaviours", "", "behaviours\x00"],
)  # fmt: skip
def test_path_tricks_in_prefab_id_are_404(client: TestClient, store: Store, prefab_id: str) -> None:
    response = client.post("/invoke", json={"prefab_id": prefab_id, "function_name": "typed", "inputs": {"text": "a"}})
    assert_error(response, 404, "NOT_FOUND")
    assert store.unchanged()


@pytest.mark.parametrize(
    "function_name",
    ["__import__", "__init__", "__class__", "typed.__globals__", "os.system", "main.typed", "../typed", "typed/", "",
     "_private", "Typed", "eval", "exec", "open"],
)  # fmt: skip
def test_names_outside_the_manifest_are_404(client: TestClient, store: Store, function_name: str) -> None:
    response = client.post("/invoke", json={"function_name": function_name, "inputs": {}})
    assert_error(response, 404, "NOT_FOUND")
    response = client.post("/invoke", json={"prefab_id": "behaviours", "function_name": function_name, "inputs": {}})
    assert_error(response, 404, "NOT_FOUND")
    assert store.unchanged()


@pytest.mark.parametrize(
    "path",
    ["/invoke/__import__", "/invoke/%2e%2e/typed", "/invoke/..%2Fbehaviours/typed", "/invoke/a%2Fb/typed",
     "/invoke/behaviours/__init__", "/invoke/os.path/typed", "/invoke/behaviours/typed%2F..",
     "/prefabs/%2e%2e", "/prefabs/..%2F..%2Fetc", "/prefabs/__init__", "/jobs/..%2F..%2Fetc", "/jobs/%2e%2e/events"],
)  # fmt: skip
def test_path_tricks_in_urls_are_404(client: TestClient, store: Store, path: str) -> None:
    if path.startswith("/invoke"):
        response = client.post(path, json={"inputs": {"text": "a"}})
    else:
        response = client.get(path)
    assert_error(response, 404, "NOT_FOUND")
    assert store.unchanged()


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/no/such/route"), 404, "NOT_FOUND")
    assert_error(client.put("/invoke", json=GOOD), 405, "METHOD_NOT_ALLOWED")
    assert_error(client.get("/jobs", params={"limit": 0}), 422, "VALIDATION_ERROR")
    for header in ("abc", "-1", "²", "9" * 5000):
        response = client.get(f"/jobs/{'0' * 32}/events", headers={"Last-Event-ID": header.encode("latin-1")})
        assert_error(response, 400, "BAD_REQUEST")
    # Beyond any seq a Redis list can index (the log is read with the record): refused, never a 500.
    response = client.get(f"/jobs/{'0' * 32}/events", params={"last_event_id": "9" * 23})
    assert_error(response, 422, "VALIDATION_ERROR")


def test_defaults_reach_the_function(make_stack: Stack) -> None:
    """Through a real worker: the function receives the manifest's defaults."""
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    response = httpx.post(f"{gateway.url}/invoke/typed", json={"inputs": {"text": "t", "tags": ["x"]}}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {
        "text": "t",
        "mode": "fast",
        "ratio": None,
        "count": None,
        "flag": None,
        "tags": ["x"],
        "options": None,
    }


def test_internal_error_is_a_bare_500_and_is_logged(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("db password is hunter2")

    app = create_app(settings)
    app.dependency_overrides[_state] = broken
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        response = client.get("/prefabs")
    error = assert_error(response, 500, "INTERNAL_SERVER_ERROR")
    assert error == {"code": "INTERNAL_SERVER_ERROR", "message": "internal error"}
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    logged = [r for r in caplog.records if r.name == "gateway.errors"]
    assert logged and logged[0].exc_info is not None
    assert "hunter2" in caplog.text and "Traceback" in caplog.text


def test_redis_down_is_503_without_details(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(unreachable), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get(f"/jobs/{'0' * 32}")
        assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert response.headers["Retry-After"]
        assert "127.0.0.1" not in response.text
        assert_error(client.get("/readyz"), 503, "SERVICE_UNAVAILABLE")
