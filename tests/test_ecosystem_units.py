"""The ecosystem API's pieces on their own: sealing keys, signed URLs, internal tokens, the error shapes."""

import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from factory import sealing
from factory.errors import PermissionDenied, Unauthenticated
from factory.settings import Settings
from gateway.app import create_app
from gateway.auth import Authenticator, caller_id
from gateway.numbers import whole_number
from gateway.v1.signed_urls import UrlSigner
from tests.shapes import assert_ecosystem_error, assert_error

KEYS = ["sk-one-0123456789", "sk-two-0123456789"]


def test_sealed_values_open_only_with_the_same_key(tmp_path: Path) -> None:
    first = Settings(state_dir=tmp_path / "a")
    token = sealing.seal(first, {"API_TOKEN": "s3cret"})
    assert token is not None and "s3cret" not in token
    assert sealing.unseal(first, token) == {"API_TOKEN": "s3cret"}
    assert sealing.unseal(Settings(state_dir=tmp_path / "a"), token) == {"API_TOKEN": "s3cret"}  # the key file
    assert sealing.unseal(Settings(state_dir=tmp_path / "b"), token) == {}  # another state dir, another key
    assert sealing.seal(first, {}) is None and sealing.unseal(first, None) == {}


def test_the_key_file_is_private_and_made_once(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    key = sealing.master_key(settings)
    path = tmp_path / sealing.KEY_FILE
    assert path.read_bytes().strip() == key and path.stat().st_mode & 0o077 == 0
    assert Fernet(key)  # a valid Fernet key


def test_secrets_key_setting_takes_a_fernet_key_or_a_passphrase(tmp_path: Path) -> None:
    fernet_key = Fernet.generate_key().decode()
    assert sealing.master_key(Settings(state_dir=tmp_path, secrets_key=fernet_key)) == fernet_key.encode()
    derived = sealing.master_key(Settings(state_dir=tmp_path / "x", secrets_key="a long passphrase"))
    again = sealing.master_key(Settings(state_dir=tmp_path, secrets_key="a long passphrase"))
    assert Fernet(derived) and derived == again
    assert not (tmp_path / "x" / sealing.KEY_FILE).exists()
    assert "a long passphrase" not in repr(Settings(secrets_key="a long passphrase"))


def test_signed_urls_open_one_method_on_one_path_until_they_expire() -> None:
    signer = UrlSigner(b"k" * 32)
    url = signer.sign("http://gw", "PUT", "/internal/files/put/abc/a b.txt", 60)
    assert url.startswith("http://gw/internal/files/put/abc/a%20b.txt?expires=")
    expires = int(url.split("expires=")[1].split("&")[0])
    signature = url.split("signature=")[1]
    signer.verify("PUT", "/internal/files/put/abc/a b.txt", expires, signature)
    for method, path, when in (
        ("GET", "/internal/files/put/abc/a b.txt", expires),
        ("PUT", "/internal/files/put/abc/other.txt", expires),
        ("PUT", "/internal/files/put/abc/a b.txt", expires + 1),
    ):
        with pytest.raises(PermissionDenied):
            signer.verify(method, path, when, signature)
    with pytest.raises(PermissionDenied):
        UrlSigner(b"other" * 8).verify("PUT", "/internal/files/put/abc/a b.txt", expires, signature)
    expired = signer.sign("", "GET", "/p", -5)
    with pytest.raises(PermissionDenied, match="expired"):
        signer.verify("GET", "/p", int(expired.split("expires=")[1].split("&")[0]), expired.split("signature=")[1])


def test_internal_tokens_name_the_caller_and_die_with_its_key() -> None:
    auth = Authenticator.from_settings(Settings(api_keys=KEYS))
    assert auth is not None
    token = auth.issue_internal(KEYS[0])
    assert KEYS[0] not in token and auth.caller_of(None, token) == caller_id(KEYS[0]) != caller_id(KEYS[1])
    assert auth.caller_of(KEYS[1], None) == caller_id(KEYS[1])
    with pytest.raises(Unauthenticated):
        auth.issue_internal("sk-wrong")
    with pytest.raises(Unauthenticated):
        auth.signer.verify(token)  # not a job token: its own key
    job_token = auth.signer.issue("0" * 32)
    with pytest.raises(Unauthenticated):
        auth.caller_of(None, job_token)  # a job token is no internal token
    rotated = Authenticator.from_settings(Settings(api_keys=[KEYS[1]], token_secret="shared"))
    kept = Authenticator.from_settings(Settings(api_keys=KEYS, token_secret="shared"))
    assert rotated is not None and kept is not None
    with pytest.raises(Unauthenticated, match="no longer valid"):
        rotated.caller_of(None, kept.issue_internal(KEYS[0]))
    assert rotated.caller_of(None, kept.issue_internal(KEYS[1])) == caller_id(KEYS[1])
    expired = auth.internal_signer.issue(caller_id(KEYS[0]), now_s=time.time() - 2 * auth.internal_signer.ttl_s)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.caller_of(None, expired)


def test_each_api_keeps_its_own_error_shape(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        call = {"prefab_id": "nope", "version": "1.0.0", "function_name": "x", "inputs": {"parameters": {}}}
        assert_ecosystem_error(client.post("/v1/run", json={"calls": [call]}), 404, "NOT_FOUND")
        assert_ecosystem_error(client.post("/v1/run", json={"calls": []}), 422, "VALIDATION_ERROR")
        typed = {**call, "prefab_id": "behaviours", "function_name": "typed", "inputs": {"parameters": {"text": 1}}}
        detail = assert_ecosystem_error(client.post("/v1/run", json={"calls": [typed]}), 422, "VALIDATION_ERROR")
        assert detail["details"] == [{"field": "inputs.text", "message": "expected string, got integer"}]
        assert_error(client.post("/invoke", json={"function_name": "nope"}), 404, "NOT_FOUND")
        download = client.get("/internal/files/download", params={"s3_url": "ftp://x"})
        assert_ecosystem_error(download, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("raw", ["0", "17", "000123", "9" * 18])
def test_whole_numbers_are_ascii_digits(raw: str) -> None:
    assert whole_number(raw) == int(raw)


@pytest.mark.parametrize("raw", [None, "", " 5", "5 ", "+5", "-5", "1_0", "1.0", "²", "٣", "1²", "9" * 19])
def test_anything_else_is_no_whole_number(raw: str | None) -> None:
    assert whole_number(raw) is None


def test_numbers_in_queries_and_headers_that_are_not_ascii_digits_are_client_errors(settings: Settings) -> None:
    """ "²" passes ``str.isdigit()`` but not ``int()``: a 500 the fuzzer found on a signed URL's ``expires``."""
    with TestClient(create_app(settings)) as client:
        blob = client.get("/internal/files/blob/f1/a.txt", params={"expires": "²", "signature": "x"})
        assert blob.status_code == 403, blob.text
        put = client.put("/internal/files/put/f1/a.txt", params={"expires": "²", "signature": "x"}, content=b"a")
        assert put.status_code == 403, put.text
        events = client.get(
            "/jobs/0123456789abcdef0123456789abcdef/events", headers={"Last-Event-ID": "²".encode("latin-1")}
        )
        assert_error(events, 400, "BAD_REQUEST")
