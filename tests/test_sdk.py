"""The ecosystem's published client, ``agent-builder-gateway-sdk`` 0.7.2 unchanged, against real factory processes.

One gateway with API keys and quotas and two workers (without the behaviours prefab's
``BEHAVIOURS_KEY``) serve the module; tests that need other settings start their own stack.
"""

import hashlib
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from gateway_sdk import (
    AuthenticationError,
    GatewayClient,
    GatewayError,
    PrefabCall,
    PrefabNotFoundError,
    QuotaExceededError,
    ServiceUnavailableError,
    ValidationError,
)
from gateway_sdk.exceptions import MissingSecretError

from factory_cli.embedded_redis import EmbeddedRedis
from tests.conftest import _db_url
from tests.stack import Gateway, Stack
from tests.test_files import BUCKET, S3_CREDENTIALS, s3, s3_server  # noqa: F401  (a fixture, used by name)

pytestmark = pytest.mark.e2e

ALICE = "sk-alice-0123456789abcdef"
BOB = "sk-bob-0123456789abcdef"
BUSY = "sk-busy-0123456789abcdef"  # one job at a time
HASTY = "sk-hasty-0123456789abcdef"  # two calls a minute
QUOTAS = {BUSY: {"max_running": 1}, HASTY: {"calls_per_minute": 2}}
BEHAVIOURS = ("behaviours", "1.0.0")
EXAMPLES = ("streaming-examples", "1.0.0")


@pytest.fixture(scope="module")
def sdk_stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(_db_url(redis_server), tmp_path_factory.mktemp("sdk"))
    stack.env["FACTORY_API_KEYS"] = ",".join([ALICE, BOB, BUSY, HASTY])
    stack.env["FACTORY_QUOTAS"] = orjson.dumps(QUOTAS).decode()
    gateway = stack.start_gateway()
    stack.env["FACTORY_PUBLIC_URL"] = gateway.url
    stack.start_worker()
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def url(sdk_stack: Stack) -> str:
    first = sdk_stack.procs[0]
    assert isinstance(first, Gateway)
    return first.url


def client_for(url: str, api_key: str) -> GatewayClient:
    return GatewayClient.from_api_key(api_key, base_url=url, timeout=60)


def store_secret(url: str, client: GatewayClient, name: str, value: str) -> None:
    response = httpx.post(
        f"{url}/v1/secrets",
        json={"prefab_id": "behaviours", "secret_name": name, "secret_value": value},
        headers={"X-Internal-Token": client.internal_token or ""},
        timeout=10,
    )
    assert response.status_code == 204, response.text


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_run_of_a_non_streaming_function(url: str) -> None:
    result = client_for(url, ALICE).run(*EXAMPLES, "word_count", {"text": "a b a\nc"})
    assert result.is_success(), result
    assert result.output is not None and result.output["status"] == "SUCCESS" and result.output["files"] == {}
    assert result.get_function_result()["words"] == 4
    job = httpx.get(f"{url}/jobs/{result.job_id}", headers={"Authorization": f"Bearer {ALICE}"}, timeout=10).json()
    assert job["status"] == "finished"


def test_run_streaming_yields_every_event_to_done(url: str) -> None:
    events = list(client_for(url, ALICE).run(*EXAMPLES, "my_stream_function", {"param": "sdk"}, stream=True))
    assert [e.type.value for e in events] == ["start"] + ["progress"] * 5 + ["done"]
    assert events[-1].data["param"] == "sdk"


def test_run_batch_with_one_failure_is_a_partial_success(url: str) -> None:
    calls = [
        PrefabCall("behaviours", "1.0.0", "async_add", {"a": 1, "b": 2}),
        PrefabCall("behaviours", "1.0.0", "raises", {"message": "boom"}),
        PrefabCall("streaming-examples", "1.0.0", "word_count", {"text": "x y"}),
    ]
    batch = client_for(url, ALICE).run_batch(calls)
    assert batch.status == "PARTIAL_SUCCESS" and not batch.all_success()
    ok, failed, last = batch.results
    assert ok.is_success() and ok.get_function_result() == 3
    assert not failed.is_success() and failed.error is not None
    assert failed.error["type"] == "UNEXPECTED_ERROR" and "boom" in failed.error["message"]
    assert last.is_success() and last.get_function_result()["words"] == 2
    assert len(batch.get_failed()) == 1


def test_a_batch_that_all_succeeds_is_completed(url: str) -> None:
    calls = [PrefabCall("behaviours", "1.0.0", "async_add", {"a": i, "b": 1}) for i in range(3)]
    batch = client_for(url, ALICE).run_batch(calls)
    assert batch.status == "COMPLETED" and [r.get_function_result() for r in batch.results] == [1, 2, 3]


def test_authentication_errors(url: str) -> None:
    with pytest.raises(AuthenticationError):
        GatewayClient.from_api_key("sk-not-a-key", base_url=url)
    with pytest.raises(AuthenticationError):
        GatewayClient(base_url=url).run(*BEHAVIOURS, "async_add", {"a": 1, "b": 2})
    alice = client_for(url, ALICE)
    assert alice.internal_token is not None and ALICE not in alice.internal_token
    caller, expires, signature = alice.internal_token.split(".")
    forged = GatewayClient(internal_token=f"{caller}.{int(expires) + 3600}.{signature}", base_url=url)
    with pytest.raises(AuthenticationError):
        forged.run(*BEHAVIOURS, "async_add", {"a": 1, "b": 2})


def test_an_api_key_as_bearer_opens_the_endpoints_too(url: str) -> None:
    response = httpx.post(
        f"{url}/v1/run",
        json={
            "calls": [
                {
                    "prefab_id": "behaviours",
                    "version": "1.0.0",
                    "function_name": "async_add",
                    "inputs": {"parameters": {"a": 2, "b": 2}},
                }
            ]
        },
        headers={"Authorization": f"Bearer {BOB}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["output"] == {"status": "SUCCESS", "output": 4, "files": {}}


@pytest.mark.parametrize(
    ("prefab_id", "version", "function_name"),
    [("no-such-prefab", "1.0.0", "async_add"), ("behaviours", "9.9.9", "async_add"), ("behaviours", "1.0.0", "nope")],
)
def test_unknown_prefab_version_or_function_is_prefab_not_found(
    url: str, prefab_id: str, version: str, function_name: str
) -> None:
    with pytest.raises(PrefabNotFoundError):
        client_for(url, ALICE).run(prefab_id, version, function_name, {"a": 1, "b": 2})


def test_inputs_that_do_not_match_the_manifest_are_a_validation_error(url: str) -> None:
    with pytest.raises(ValidationError) as raised:
        client_for(url, ALICE).run(*BEHAVIOURS, "typed", {"text": 5})
    assert "text" in str(raised.value.message) or "match" in str(raised.value.message)


def test_a_missing_secret_is_missing_secret_error_with_the_manifest_instructions(url: str) -> None:
    with pytest.raises(MissingSecretError) as raised:
        client_for(url, BOB).run(*BEHAVIOURS, "secret_digest", {})
    assert raised.value.prefab_id == "behaviours" and raised.value.secret_name == "BEHAVIOURS_KEY"
    assert raised.value.instructions == "Store any value as BEHAVIOURS_KEY with POST /v1/secrets"
    # Streaming, the client maps errors before reading the body, so it sees the status and not the
    # error code: a GatewayError whose message holds our detail.
    with pytest.raises(GatewayError) as streamed:
        list(client_for(url, BOB).run(*BEHAVIOURS, "needs_secret", {}, stream=True))
    assert '"error_code":"MISSING_SECRET"' in streamed.value.message
    assert '"secret_name":"BEHAVIOURS_TOKEN"' in streamed.value.message


def test_secrets_reach_only_their_callers_calls(url: str, sdk_stack: Stack) -> None:
    alice, bob = client_for(url, ALICE), client_for(url, BOB)
    store_secret(url, alice, "BEHAVIOURS_KEY", "alice-secret-value-1")
    listed = httpx.get(f"{url}/v1/secrets/behaviours", headers={"X-Internal-Token": alice.internal_token or ""})
    assert listed.json() == {"prefab_id": "behaviours", "secret_names": ["BEHAVIOURS_KEY"]}
    assert "alice-secret-value-1" not in listed.text
    assert alice.run(*BEHAVIOURS, "secret_digest", {}).get_function_result() == {
        "sha256": digest("alice-secret-value-1")
    }
    with pytest.raises(MissingSecretError):
        bob.run(*BEHAVIOURS, "secret_digest", {})
    store_secret(url, bob, "BEHAVIOURS_KEY", "bob-secret-value-2")
    assert bob.run(*BEHAVIOURS, "secret_digest", {}).get_function_result() == {"sha256": digest("bob-secret-value-2")}
    assert_nowhere_in_clear(sdk_stack, [b"alice-secret-value-1", b"bob-secret-value-2"])

    deleted = httpx.delete(
        f"{url}/v1/secrets/behaviours/BEHAVIOURS_KEY", headers={"X-Internal-Token": alice.internal_token or ""}
    )
    assert deleted.status_code == 204
    with pytest.raises(MissingSecretError):
        alice.run(*BEHAVIOURS, "secret_digest", {})
    assert bob.run(*BEHAVIOURS, "secret_digest", {}).is_success()


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"hash":
        return [part for pair in client.hgetall(key).items() for part in pair]
    if kind == b"list":
        return list(client.lrange(key, 0, -1))
    if kind == b"zset":
        return list(client.zrange(key, 0, -1))
    if kind == b"set":
        return list(client.smembers(key))
    return []


def _unpacked(value: bytes) -> bytes:
    try:
        return value + zlib.decompress(value)  # RQ compresses a job's data
    except zlib.error:
        return value


def assert_nowhere_in_clear(stack: Stack, secrets: list[bytes]) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    for key in client.scan_iter(count=1000):
        for value in _values(client, key):
            for secret in secrets:
                assert secret not in _unpacked(value), key
    for proc in stack.procs:
        for secret in secrets:
            assert secret.decode() not in proc.log(), proc.name


def test_upload_run_with_the_file_and_download_the_output(url: str, tmp_path: Path) -> None:
    alice = client_for(url, ALICE)
    source = tmp_path / "note.txt"
    source.write_text("hello from the sdk", encoding="utf-8")
    ref = alice.upload_input_file(str(source), content_type="text/plain")
    result = alice.run(*BEHAVIOURS, "shout_file", {}, files={"input": [ref]})
    assert result.is_success(), result
    assert result.get_function_result() == {"name": "note.txt", "size": len("hello from the sdk")}
    (output,) = result.get_files()["output"]
    alice.download_file(output, str(tmp_path / "out" / "shouted.txt"))
    assert (tmp_path / "out" / "shouted.txt").read_text(encoding="utf-8") == "HELLO FROM THE SDK"
    alice.download_file(ref, str(tmp_path / "out" / "again.txt"))
    assert (tmp_path / "out" / "again.txt").read_bytes() == source.read_bytes()


def test_an_upload_url_only_takes_its_own_signed_put(url: str) -> None:
    alice = client_for(url, ALICE)
    response = httpx.post(
        f"{url}/internal/files/generate_upload_url",
        json={"filename": "a.txt", "content_type": "text/plain"},
        headers={"X-Internal-Token": alice.internal_token or ""},
    )
    upload_url = response.json()["upload_url"]
    assert httpx.put(upload_url.replace("signature=", "signature=x"), content=b"x").status_code == 403
    assert httpx.put(upload_url.replace("/a.txt", "/b.txt"), content=b"x").status_code == 403
    assert httpx.put(upload_url, content=b"x").status_code == 200


def test_permanent_and_temporary_files(url: str, tmp_path: Path) -> None:
    alice, bob = client_for(url, ALICE), client_for(url, BOB)
    path = tmp_path / "keep.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    kept = alice.upload_file(str(path))
    assert kept["success"] is True and kept["filename"] == "keep.csv" and kept["size"] == 8
    assert [f["s3_url"] for f in alice.list_files()["files"]] == [kept["s3_url"]]
    assert bob.list_files()["files"] == []
    first = alice.upload_temp_file(str(path), ttl=3600, session_id="s-1")
    second = alice.upload_temp_file(str(path), ttl=1, session_id="s-2")
    assert {f["s3_url"] for f in alice.list_temp_files()["files"]} >= {first["s3_url"]}
    assert [f["s3_url"] for f in alice.list_temp_files(session_id="s-1")["files"]] == [first["s3_url"]]
    deadline = time.monotonic() + 30  # the one-second file expires: unlisted, and no longer downloadable
    while alice.list_temp_files(session_id="s-2")["files"]:
        assert time.monotonic() < deadline, "the temporary file outlived its ttl"
        time.sleep(0.2)
    with pytest.raises(PrefabNotFoundError):  # the SDK maps every 404 to PrefabNotFoundError
        alice.get_presigned_url(second["s3_url"])
    assert alice.cleanup_temp_files("s-1") == 1
    assert alice.list_temp_files(session_id="s-1")["files"] == []
    with pytest.raises(PrefabNotFoundError):
        alice.get_presigned_url(first["s3_url"])


def test_jobs_at_once_quota(url: str) -> None:
    busy = client_for(url, BUSY)
    events = busy.run(*BEHAVIOURS, "counter", {"count": 20, "delay_s": 0.1}, stream=True)
    assert isinstance(events, Iterator)
    assert next(events).type.value == "start"  # the first job runs
    with pytest.raises(QuotaExceededError) as raised:
        busy.run(*BEHAVIOURS, "async_add", {"a": 1, "b": 2})
    assert (raised.value.quota_type, raised.value.limit, raised.value.used) == ("max_running", 1, 1)
    assert [e.type.value for e in events][-1] == "done"
    assert busy.run(*BEHAVIOURS, "async_add", {"a": 1, "b": 2}).is_success()  # the slot is free again


def test_calls_per_minute_quota(url: str) -> None:
    hasty = client_for(url, HASTY)
    # Five calls within seconds span at most two clock minutes, so at most four can pass.
    with pytest.raises(QuotaExceededError) as raised:
        for _ in range(5):
            hasty.run(*BEHAVIOURS, "async_add", {"a": 1, "b": 2})
    assert (raised.value.quota_type, raised.value.limit, raised.value.used) == ("calls_per_minute", 2, 2)


def test_a_full_queue_is_service_unavailable(sdk_stack: Stack) -> None:
    full = sdk_stack.start_gateway(FACTORY_MAX_QUEUE_LENGTH="0")
    with pytest.raises(ServiceUnavailableError):
        client_for(full.url, ALICE).run(*BEHAVIOURS, "async_add", {"a": 1, "b": 2})
    full.stop()


def test_whitelist_mode_needs_no_token(make_stack: Stack) -> None:
    """Without API keys, the client needs no token, as in the ecosystem's whitelist mode."""
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    client = GatewayClient(base_url=gateway.url, timeout=60)
    assert client.run(*BEHAVIOURS, "async_add", {"a": 2, "b": 3}).get_function_result() == 5
    assert (
        GatewayClient.from_api_key("sk-anything", base_url=gateway.url)
        .run(*BEHAVIOURS, "async_add", {"a": 1, "b": 1})
        .is_success()
    )


def test_callers_secrets_go_ahead_of_the_workers_own(make_stack: Stack) -> None:
    """A caller's stored secret wins; a caller without one gets the worker's (the worker decides, no 400)."""
    make_stack.env["FACTORY_API_KEYS"] = ",".join([ALICE, BOB])
    gateway = make_stack.start_gateway()
    make_stack.start_worker(BEHAVIOURS_KEY="the-workers-own-key")
    alice, bob = client_for(gateway.url, ALICE), client_for(gateway.url, BOB)
    store_secret(gateway.url, alice, "BEHAVIOURS_KEY", "alices-key")
    assert alice.run(*BEHAVIOURS, "secret_digest", {}).get_function_result() == {"sha256": digest("alices-key")}
    assert bob.run(*BEHAVIOURS, "secret_digest", {}).get_function_result() == {"sha256": digest("the-workers-own-key")}
    per_call = httpx.post(
        f"{gateway.url}/invoke/secret_digest",
        json={"inputs": {}, "_secrets": {"BEHAVIOURS_KEY": "a-per-call-key"}},
        headers={"Authorization": f"Bearer {BOB}"},
        timeout=30,
    )
    assert per_call.status_code == 200, per_call.text
    body = per_call.json()
    assert body["status"] == "SUCCESS" and body["output"] == {"sha256": digest("a-per-call-key")}
    assert body["files"] == {} and body["job_id"] == per_call.headers["X-Job-Id"]
    assert_nowhere_in_clear(make_stack, [b"alices-key", b"a-per-call-key"])


def test_a_streaming_functions_output_file_as_the_readme_shows(url: str, tmp_path: Path) -> None:
    alice = client_for(url, ALICE)
    notes = tmp_path / "notes.txt"
    notes.write_text("one two\nthree\n", encoding="utf-8")
    ref = alice.upload_input_file(str(notes), content_type="text/plain")
    events = list(alice.run(*EXAMPLES, "process_large_file", {}, files={"input": [ref]}, stream=True))
    assert events[-1].type.value == "done"
    output_url = next(e.data["output"][0] for e in events if isinstance(e.data, dict) and "output" in e.data)
    alice.download_file(output_url, str(tmp_path / "out" / "notes.summary.json"))
    summary = orjson.loads((tmp_path / "out" / "notes.summary.json").read_bytes())
    assert summary == {"file": "notes.txt", "lines": 2, "words": 3, "chars": len("one two") + len("three")}


def test_files_through_s3_storage_use_presigned_urls(
    make_stack: Stack,
    s3_server: str,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    s3(s3_server).create_bucket(Bucket=BUCKET)
    make_stack.env.update(
        {"FACTORY_STORAGE_URL": f"s3://{BUCKET}/factory", "FACTORY_S3_ENDPOINT_URL": s3_server, **S3_CREDENTIALS}
    )
    gateway = make_stack.start_gateway()
    make_stack.env["FACTORY_PUBLIC_URL"] = gateway.url
    make_stack.start_worker()
    client = GatewayClient(base_url=gateway.url, timeout=60)
    source = tmp_path / "in.txt"
    source.write_text("to the bucket", encoding="utf-8")
    ref = client.upload_input_file(str(source), content_type="text/plain")
    presigned = httpx.post(f"{gateway.url}/internal/files/generate_upload_url", json={"filename": "x.txt"}).json()
    assert presigned["upload_url"].startswith(f"{s3_server}/{BUCKET}/factory/uploads/")
    result = client.run(*BEHAVIOURS, "shout_file", {}, files={"input": [ref]})
    assert result.is_success(), result
    client.download_file(result.get_files()["output"][0], str(tmp_path / "out" / "shouted.txt"))
    assert (tmp_path / "out" / "shouted.txt").read_text(encoding="utf-8") == "TO THE BUCKET"
    assert client.get_presigned_url(ref).startswith(f"{s3_server}/{BUCKET}/factory/uploads/")
    client.download_file(ref, str(tmp_path / "out" / "in.txt"))
    assert (tmp_path / "out" / "in.txt").read_bytes() == source.read_bytes()
