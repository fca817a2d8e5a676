"""The express lane (``gateway.express``) answers a call's requests exactly as the app's routes do.

Each request goes twice: as it is, which the lane serves when it can, and with a query string the
routes ignore, which the lane always hands to the app. In-process (the lifespan runs) against the
session's real Redis; a spy on the lane's calls proves which of the two served a request.
"""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from factory.settings import Settings
from factory.store import keys
from gateway import express
from gateway.app import create_app

GOOD = {"function_name": "typed", "inputs": {"text": "hello"}}
KEY = "express-key-1"
VIA_APP = "?via=app"  # the routes ignore it; the lane serves no request with a query string


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lane's answers, by the route function it called (each still runs)."""
    calls: list[str] = []
    for name in ("accept_call", "answer_seed_call", "events_response"):
        real = getattr(express, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(express, name, spy)
    return calls


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # No worker runs: a non-streaming seed call answers 202 after sync_wait_s.
    with TestClient(create_app(settings.model_copy(update={"max_queue_length": 3, "sync_wait_s": 0.2}))) as client:
        yield client


@pytest.fixture
def auth_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"api_keys": [KEY]}))) as client:
        yield client


def _alike(lane: httpx.Response, app: httpx.Response) -> None:
    """Same status, same error body (a job's own id and URLs aside), same headers that matter."""
    assert lane.status_code == app.status_code, (lane.text, app.text)
    for header in ("content-type", "retry-after", "www-authenticate"):
        assert lane.headers.get(header) == app.headers.get(header)
    if lane.status_code >= 400:
        assert lane.json() == app.json()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"function_name": "typed", "inputs": {"text": "hello"}}', "application/json"),
        (b'{"function_name": "typed", "inputs": {"text": "hello"}', "application/json"),  # not JSON
        (b'{"function_name": "typed", "inputs": {"text": NaN}}', "application/json"),
        (b'{"function_name": "typed", "inputs": {"text": "\\ud800"}}', "application/json"),
        (b'{"inputs": {"text": "hello"}}', "application/json"),  # no function
        (b'{"function_name": "nope", "inputs": {}}', "application/json"),  # unknown function
        (b'{"function_name": "typed", "inputs": {"text": 3}}', "application/json"),  # against the manifest
        (b'{"function_name": "typed", "inputs": {}, "parameters": {}}', "application/json"),
        (b'{"function_name": "typed", "inputs": {"text": "a"}, "retries": true}', "application/json"),
        (b'{"function_name": "typed", "inputs": {"text": "a"}, "extra": 1}', "application/json"),
        (b'{"function_name": "typed", "inputs": {"text": "hello"}}', "text/plain"),
        (b"[]", "application/json"),
    ],
)
def test_invoke_answers_as_the_route(client: TestClient, served: list[str], body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type}
    lane = client.post("/invoke", content=body, headers=headers)
    app = client.post(f"/invoke{VIA_APP}", content=body, headers=headers)
    _alike(lane, app)
    assert served == (["accept_call"] if lane.status_code == 202 else [])
    if lane.status_code == 202:
        accepted, routed = lane.json(), app.json()
        assert set(accepted) == set(routed) and accepted["job_id"] != routed["job_id"]
        assert accepted["status_url"] == f"http://testserver/jobs/{accepted['job_id']}"
        assert lane.headers["location"] == accepted["status_url"]


def test_a_refusal_after_the_enqueue_is_the_apps_and_nothing_runs_twice(
    client: TestClient, settings: Settings, served: list[str]
) -> None:
    """The queue holds 3: the lane's fourth call is refused by the enqueue itself, answered by the
    app's handler (503 and Retry-After), and the queue still holds 3."""
    for _ in range(3):
        assert client.post("/invoke", json=GOOD).status_code == 202
    lane, app = client.post("/invoke", json=GOOD), client.post(f"/invoke{VIA_APP}", json=GOOD)
    _alike(lane, app)
    assert lane.status_code == 503 and lane.headers["retry-after"]
    assert served == ["accept_call"] * 4
    assert settings.redis_url
    with redis.Redis.from_url(settings.redis_url) as store:
        assert store.llen(keys.rq_queue_key(keys.prefab_queue_name(settings.queue_name, "behaviours"))) == 3


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/invoke/nope", {"inputs": {}}),
        ("/invoke/behaviours/nope", {"inputs": {}}),
        ("/invoke/typed", {"inputs": {"text": 3}}),
        ("/invoke/typed", {"inputs": {"text": "a"}, "function_name": "typed"}),
        ("/invoke/typed", {"inputs": {"text": "a"}, "_secrets": {"TOKEN": 1}}),
    ],
)
def test_seed_form_refusals_are_the_routes(
    client: TestClient, served: list[str], path: str, body: dict[str, Any]
) -> None:
    _alike(client.post(path, json=body), client.post(f"{path}{VIA_APP}", json=body))
    assert served == []


def test_seed_form_calls_answer_as_the_route(client: TestClient, served: list[str]) -> None:
    """The queue holds 3 jobs: two calls through the lane, one through the app."""
    app = client.post(f"/invoke/typed{VIA_APP}", json={"inputs": {"text": "a"}})
    for path in ("/invoke/typed", "/invoke/behaviours/typed"):
        lane = client.post(path, json={"inputs": {"text": "a"}})
        _alike(lane, app)
        assert lane.status_code == 202 and set(lane.json()) == set(app.json())
        assert lane.headers["x-job-id"] == lane.json()["job_id"] != app.headers["x-job-id"]
    assert served == ["answer_seed_call"] * 2


def test_events_of_an_ended_job_and_refusals_are_the_routes(client: TestClient, served: list[str]) -> None:
    job_id = client.post("/invoke", json=GOOD).json()["job_id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    lane = client.get(f"/jobs/{job_id}/events")
    app = client.get(f"/jobs/{job_id}/events{VIA_APP}")
    _alike(lane, app)
    assert lane.status_code == 200 and lane.text == app.text and "CANCELED" in lane.text
    assert served == ["accept_call", "events_response"]
    for path, headers in (
        ("/jobs/nope/events", {}),
        (f"/jobs/{job_id}/events", {"last-event-id": "x"}),
        (f"/jobs/{job_id}/events", {"last-event-id": "99"}),
        (f"/jobs/{job_id}/events", {"last-event-id": "1"}),  # it ended there: 204
    ):
        _alike(client.get(path, headers=headers), client.get(f"{path}{VIA_APP}", headers=headers))


def test_with_auth_the_lane_serves_only_what_the_authenticator_lets_through(
    auth_client: TestClient, served: list[str]
) -> None:
    bearer = {"authorization": f"Bearer {KEY}"}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}):
        _alike(
            auth_client.post("/invoke", json=GOOD, headers=headers),
            auth_client.post(f"/invoke{VIA_APP}", json=GOOD, headers=headers),
        )
    assert served == []
    accepted = auth_client.post("/invoke", json=GOOD, headers=bearer).json()
    other = auth_client.post("/invoke", json=GOOD, headers=bearer).json()
    assert served == ["accept_call", "accept_call"]
    assert auth_client.post(f"/jobs/{accepted['job_id']}/cancel", headers=bearer).status_code == 200
    own = {"authorization": f"Bearer {accepted['token']}"}
    lane = auth_client.get(f"/jobs/{accepted['job_id']}/events", headers=own)
    assert lane.status_code == 200 and "CANCELED" in lane.text and served[-1] == "events_response"
    for job_id in (other["job_id"],):  # a job token opens its own job only
        path = f"/jobs/{job_id}/events"
        _alike(auth_client.get(path, headers=own), auth_client.get(f"{path}{VIA_APP}", headers=own))
    assert auth_client.post("/invoke", json=GOOD, headers=own).status_code == 403
    assert served.count("events_response") == 1
