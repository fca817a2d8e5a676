"""Sealing: the one key that keeps callers' secrets unreadable in Redis, and what is derived from it.

Callers' secrets are stored (``gateway.v1.secret_store``) and handed to the worker inside the
enqueued request (``InvocationRequest.sealed_secrets``) only as Fernet tokens (AES-128-CBC +
HMAC-SHA256, with a timestamp), so Redis, its dumps and RQ's job payloads never hold them in
clear. Gateways and workers must share the key:

* ``FACTORY_SECRETS_KEY``: a Fernet key (``Fernet.generate_key()``), or any passphrase, from which
  a key is derived (SHA-256). Set it wherever gateways and workers do not share a state directory.
* unset: a random key generated once into ``<state_dir>/secrets.key`` (mode 0600), which every
  process of one ``factory up`` (or of a shared volume) reads. Created atomically, so concurrent
  first starts agree on one key.

Other keys (the signature of upload and download URLs) are derived from it by HMAC with a label,
so one secret configures them all. Pure functions plus a small cache; nothing at import time.
"""

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
from pathlib import Path

import orjson
from cryptography.fernet import Fernet, InvalidToken

from factory.manifest import FunctionSpec
from factory.settings import Settings

logger = logging.getLogger(__name__)

KEY_FILE = "secrets.key"
_PASSPHRASE_LABEL = b"prefab-factory secrets key v1"


def _from_setting(value: str) -> bytes:
    """A Fernet key as given, or one derived from a passphrase."""
    try:
        if len(base64.urlsafe_b64decode(value.encode())) == 32:
            return value.encode()
    except (binascii.Error, ValueError):
        pass
    digest = hashlib.sha256(_PASSPHRASE_LABEL + value.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def _from_file(state_dir: Path) -> bytes:
    """The key in ``state_dir/secrets.key``, created (atomically, 0600) when there is none."""
    path = state_dir / KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as sink:
            sink.write(Fernet.generate_key())
        try:
            os.link(tmp, path)  # fails if another process was first: then its key is the one
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


@functools.lru_cache(maxsize=8)
def _key(secrets_key: str | None, state_dir: str) -> bytes:
    return _from_setting(secrets_key) if secrets_key else _from_file(Path(state_dir))


def master_key(settings: Settings) -> bytes:
    """The Fernet key (urlsafe base64 of 32 bytes) shared by gateways and workers."""
    return _key(settings.secrets_key, str(settings.state_dir.resolve()))


def derived_key(settings: Settings, label: str) -> bytes:
    """A key for another purpose, derived from the master key."""
    return hmac.new(master_key(settings), label.encode(), hashlib.sha256).digest()


def fernet(settings: Settings) -> Fernet:
    return Fernet(master_key(settings))


def seal(settings: Settings, values: dict[str, str]) -> str | None:
    """``values`` as one Fernet token; None when there is nothing to seal."""
    if not values:
        return None
    return fernet(settings).encrypt(orjson.dumps(values)).decode()


def seal_declared(settings: Settings, spec: FunctionSpec, values: dict[str, str]) -> str | None:
    """Seal only the secrets ``spec`` declares: a value the function cannot use never travels."""
    declared = {secret.name for secret in spec.secrets}
    return seal(settings, {name: value for name, value in values.items() if name in declared})


def unseal(settings: Settings, token: str | None) -> dict[str, str]:
    """The sealed values; empty (and logged, without the token) when the key does not open them."""
    if not token:
        return {}
    try:
        values = orjson.loads(fernet(settings).decrypt(token.encode()))
    except (InvalidToken, orjson.JSONDecodeError):
        logger.error("a request's sealed secrets cannot be opened: FACTORY_SECRETS_KEY differs between processes")
        return {}
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}
