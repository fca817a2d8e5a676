"""Auth (CONTRACT §6) and CORS: API keys on every endpoint but the open ones, per-job tokens for
browsers, errors in the contract's shape. In-process against the real Redis, plus one browser-like
run over real processes.
"""

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from factory.errors import Unauthenticated
from factory.settings import Settings
from gateway.app import create_app
from gateway.auth import ECOSYSTEM_PREFIXES, OPEN_PATHS, Authenticator, TokenSigner
from gateway.v1.files import BLOB_PREFIX, PUT_PREFIX
from tests.shapes import assert_ecosystem_error, assert_error
from tests.stack import Stack, parse_frames

KEYS = ["key-one-0123456789", "key-two-abcdefghij"]
GOOD = {"function_name": "typed", "inputs": {"text": "hello"}}
SIGNED_PREFIXES = (PUT_PREFIX, BLOB_PREFIX)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": KEYS, "sync_wait_s": 0.2})


@pytest.fixture
def client(auth_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(auth_settings)) as client:
        yield client


def invoke(client: TestClient, body: dict[str, Any] = GOOD) -> dict[str, Any]:
    response = client.post("/invoke", json=body, headers=bearer(KEYS[0]))
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def _api_routes(settings: Settings) -> list[tuple[str, str]]:
    """Every operation the API documents (the console page ``/`` is left out of the schema)."""
    paths: dict[str, dict[str, Any]] = create_app(settings).openapi()["paths"]
    return [(method.upper(), path) for path, operations in paths.items() for method in operations]


def _concrete(path: str) -> str:
    path = path.replace("{job_id}", "0" * 32).replace("{prefab_id}", "behaviours").replace("{function_name}", "typed")
    return re.sub(r"\{[^}]+\}", "x", path)


def test_without_keys_auth_is_off_and_no_token_is_issued(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/prefabs").status_code == 200
        response = client.post("/invoke", json=GOOD)
        assert response.status_code == 202 and response.json()["token"] is None


def test_every_endpoint_but_the_open_ones_needs_a_key(auth_settings: Settings, client: TestClient) -> None:
    """Enumerates the app's routes, so a router added later is checked too."""
    routes = _api_routes(auth_settings)
    assert ("POST", "/invoke") in routes and ("GET", "/jobs/{job_id}/events") in routes
    for method, path in routes:
        url = _concrete(path)
        response = client.request(method, url, json={} if method == "POST" else None)
        if path in OPEN_PATHS:
            assert response.status_code == 200, (method, path, response.text)
            continue
        if path.startswith(SIGNED_PREFIXES):  # the signature is the credential
            assert_ecosystem_error(response, 403, "PERMISSION_DENIED")
            continue
        if path.startswith(ECOSYSTEM_PREFIXES):
            detail = assert_ecosystem_error(response, 401, "UNAUTHENTICATED")
            assert "Bearer" in detail["message"], (method, path)
            continue
        error = assert_error(response, 401, "UNAUTHENTICATED")
        assert "Bearer" in error["message"], (method, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_health_probes_console_and_docs_are_open(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Bearer {KEYS[0]}x"},
        {"Authorization": f"Bearer {KEYS[0][:-1]}"},
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": KEYS[0]},
        {"Authorization": "Bearer "},
        {"X-API-Key": KEYS[0]},
    ],
)
def test_wrong_or_missing_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.get("/prefabs", headers=headers), 401, "UNAUTHENTICATED")
    assert_error(client.post("/invoke", json=GOOD, headers=headers), 401, "UNAUTHENTICATED")


def test_any_configured_key_opens_everything(client: TestClient) -> None:
    for key in KEYS:
        assert client.get("/prefabs", headers=bearer(key)).status_code == 200
        assert client.get("/jobs", headers=bearer(key)).status_code == 200
        assert client.get("/metrics", headers=bearer(key)).status_code == 200
    assert client.get("/prefabs", headers={"Authorization": f"bearer {KEYS[1]}"}).status_code == 200


def test_credentials_are_checked_before_the_inputs(client: TestClient) -> None:
    """An unauthenticated caller learns nothing about the catalog or the inputs."""
    assert_error(client.post("/invoke", json={"function_name": "nope", "inputs": {}}), 401, "UNAUTHENTICATED")
    assert_error(client.post("/invoke", json={"function_name": "typed", "inputs": {"x": 1}}), 401, "UNAUTHENTICATED")
    assert_error(client.get(f"/jobs/{'0' * 32}"), 401, "UNAUTHENTICATED")


def test_invoke_returns_a_token_that_opens_its_job_only(client: TestClient) -> None:
    accepted = invoke(client)
    job_id, token = accepted["job_id"], accepted["token"]
    assert token and job_id in token and KEYS[0] not in token
    assert client.get(f"/jobs/{job_id}", params={"token": token}).json()["status"] == "queued"
    assert client.get(f"/jobs/{job_id}", headers=bearer(token)).status_code == 200  # fetch() may send it as bearer
    files = client.get(f"/jobs/{job_id}/files/out.txt", params={"token": token})
    assert_error(files, 404, "NOT_FOUND")  # let through to the route: the job has no such file
    client.post(f"/jobs/{job_id}/cancel", headers=bearer(KEYS[1]))  # ends the job, so its stream is finite
    response = client.get(f"/jobs/{job_id}/events", params={"token": token})
    assert response.status_code == 200
    events = list(parse_frames(iter(response.text.splitlines())))
    assert [(e.type, e.event["error_code"]) for e in events] == [("error", "CANCELED")]


def test_another_jobs_token_is_403(client: TestClient) -> None:
    first, second = invoke(client), invoke(client)
    for path in ("", "/events", "/files/out.txt"):
        response = client.get(f"/jobs/{second['job_id']}{path}", params={"token": first["token"]})
        assert "another job" in assert_error(response, 403, "PERMISSION_DENIED")["message"]


def test_a_token_opens_nothing_but_reading_its_job(client: TestClient) -> None:
    accepted = invoke(client)
    job_id, token = accepted["job_id"], accepted["token"]
    refused = [
        client.post(f"/jobs/{job_id}/cancel", params={"token": token}),
        client.get("/jobs", params={"token": token}),
        client.get("/prefabs", params={"token": token}),
        client.get("/metrics", params={"token": token}),
        client.post("/invoke", json=GOOD, params={"token": token}),
        client.post("/invoke", json=GOOD, headers=bearer(token)),
    ]
    for response in refused:
        assert_error(response, 403, "PERMISSION_DENIED")
    assert client.get(f"/jobs/{job_id}").status_code == 401


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature
        lambda t: t.replace(".", ".9", 1),  # expiry pushed out
        lambda t: t.replace(".", ".0", 1),  # the same expiry spelled with a leading zero
        lambda t: t.replace(".", ".00", 1),
        lambda t: "f" * 32 + t[32:],  # another job id with this signature
        lambda t: t + ".x",
        lambda t: "",
        lambda t: "not-a-token",
        lambda t: "a.99999999999999999999999.b",
    ],
)
def test_forged_tokens_are_401(client: TestClient, mangle: Any) -> None:
    accepted = invoke(client)
    forged = mangle(accepted["token"])
    response = client.get(f"/jobs/{accepted['job_id']}", params={"token": forged})
    assert_error(response, 401, "UNAUTHENTICATED")


def test_tokens_expire(auth_settings: Settings) -> None:
    """A token lives ``token_ttl_s`` from its issue, and the gateway refuses it once that passed.

    The clock is explicit: an expired token is one the gateway's own signer issued as of an instant
    longer ago than its lifetime, so nothing waits for time to pass (the boundary itself is
    ``test_token_signer_bounds``'s)."""
    settings = auth_settings.model_copy(update={"token_ttl_s": 60})
    authenticator = Authenticator.from_settings(settings)
    assert authenticator is not None
    with TestClient(create_app(settings)) as client:
        before_s = time.time()
        accepted = invoke(client)
        job_id, token = accepted["job_id"], accepted["token"]
        assert authenticator.signer.verify(token, now_s=before_s + 59) == job_id
        with pytest.raises(Unauthenticated, match="expired"):
            authenticator.signer.verify(token, now_s=time.time() + 61)
        assert client.get(f"/jobs/{job_id}", params={"token": token}).status_code == 200
        expired = authenticator.signer.issue(job_id, now_s=time.time() - 61)
        response = client.get(f"/jobs/{job_id}", params={"token": expired})
        assert "expired" in assert_error(response, 401, "UNAUTHENTICATED")["message"]


def test_token_signer_bounds() -> None:
    signer = TokenSigner(b"secret", ttl_s=60)
    token = signer.issue("abc", now_s=1000)
    assert signer.verify(token, now_s=1059) == "abc"
    with pytest.raises(Exception, match="expired"):
        signer.verify(token, now_s=1060)
    with pytest.raises(Exception, match="invalid"):
        TokenSigner(b"other", ttl_s=60).verify(token, now_s=1000)


def test_tokens_are_stateless_across_gateways(auth_settings: Settings) -> None:
    """Any gateway configured with the same keys (or the same token secret) accepts another's tokens."""
    with TestClient(create_app(auth_settings)) as first, TestClient(create_app(auth_settings)) as second:
        accepted = invoke(first)
        assert second.get(f"/jobs/{accepted['job_id']}", params={"token": accepted["token"]}).status_code == 200
    rotated = auth_settings.model_copy(update={"api_keys": ["a-new-key"]})
    with TestClient(create_app(rotated)) as third:  # rotating the keys revokes the tokens
        response = third.get(f"/jobs/{accepted['job_id']}", params={"token": accepted["token"]})
        assert_error(response, 401, "UNAUTHENTICATED")
    one = auth_settings.model_copy(update={"token_secret": "shared-secret"})
    other = one.model_copy(update={"api_keys": ["a-new-key"]})
    with TestClient(create_app(one)) as first, TestClient(create_app(other)) as second:
        accepted = invoke(first)
        assert second.get(f"/jobs/{accepted['job_id']}", params={"token": accepted["token"]}).status_code == 200


def test_keys_are_compared_whole() -> None:
    auth = Authenticator.from_settings(Settings(api_keys=KEYS))
    assert auth is not None
    assert auth.is_key(KEYS[0]) and auth.is_key(KEYS[1])
    assert not any(auth.is_key(k) for k in ("", KEYS[0][:-1], KEYS[0] + "x", KEYS[0].upper(), ",".join(KEYS)))
    assert Authenticator.from_settings(Settings()) is None


def test_seed_forms_return_the_token_in_a_header(client: TestClient) -> None:
    # No worker runs, so the non-streaming call answers 202 after sync_wait_s with the job to follow.
    response = client.post("/invoke/typed", json={"inputs": {"text": "a"}}, headers=bearer(KEYS[0]))
    assert response.status_code == 202, response.text
    token = response.headers["X-Job-Token"]
    assert response.json()["token"] == token
    assert client.get(f"/jobs/{response.headers['X-Job-Id']}", params={"token": token}).status_code == 200
    assert_error(client.post("/invoke/typed", json={"inputs": {"text": "a"}}), 401, "UNAUTHENTICATED")


def test_metrics_can_be_made_public(auth_settings: Settings) -> None:
    with TestClient(create_app(auth_settings)) as client:
        assert_error(client.get("/metrics"), 401, "UNAUTHENTICATED")
    with TestClient(create_app(auth_settings.model_copy(update={"metrics_public": True}))) as client:
        assert client.get("/metrics").status_code == 200
        assert_error(client.get("/prefabs"), 401, "UNAUTHENTICATED")


def test_secrets_never_appear_in_settings_repr() -> None:
    settings = Settings(api_keys=KEYS, token_secret="the-token-secret")
    assert KEYS[0] not in repr(settings) and "the-token-secret" not in repr(settings)


def test_cors_preflight_and_exposed_headers(settings: Settings) -> None:
    origin = "https://app.example.com"
    configured = settings.model_copy(update={"cors_origins": [origin], "api_keys": KEYS})
    with TestClient(create_app(configured)) as client:
        preflight = client.options(
            "/invoke",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200  # a preflight carries no credentials, and needs none
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        response = client.post("/invoke", json=GOOD, headers={"Origin": origin, **bearer(KEYS[0])})
        assert response.headers["access-control-allow-origin"] == origin
        exposed = response.headers["access-control-expose-headers"]
        assert "X-Job-Token" in exposed and "Location" in exposed
        refused = client.get("/prefabs", headers={"Origin": origin})  # a browser can read the 401 too
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
        other = client.options(
            "/invoke", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_no_cors_headers_unless_configured(client: TestClient) -> None:
    response = client.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.e2e
def test_browser_follows_its_job_with_the_token_only(make_stack: Stack) -> None:
    """What a page does: invoke with the key, then an EventSource on ``events_url?token=``."""
    make_stack.env["FACTORY_API_KEYS"] = ",".join(KEYS)
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    response = httpx.post(
        f"{gateway.url}/invoke",
        json={"function_name": "counter", "inputs": {"count": 3}},
        headers=bearer(KEYS[1]),
    )
    accepted = response.json()
    with httpx.stream("GET", accepted["events_url"], params={"token": accepted["token"]}, timeout=30) as stream:
        assert stream.status_code == 200
        events = list(parse_frames(stream.iter_lines()))
    assert [e.type for e in events] == ["start", "progress", "progress", "progress", "done"]
    with httpx.stream(
        "POST", f"{gateway.url}/invoke/counter", json={"inputs": {"count": 2}}, headers=bearer(KEYS[0]), timeout=30
    ) as seed:
        assert seed.status_code == 200 and seed.headers["X-Job-Token"]
        assert [e.type for e in parse_frames(seed.iter_lines())][-1] == "done"
    assert httpx.get(f"{gateway.url}/jobs/{accepted['job_id']}").status_code == 401
    gateway.wait_for_log("token=[redacted]")  # the access log line of the EventSource request
    assert accepted["token"] not in gateway.log()
