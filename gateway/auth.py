"""API keys and per-job tokens: who may call which endpoint.

Off unless ``Settings.api_keys`` is set. Then every route needs ``Authorization: Bearer <API key>``
except the open ones: ``/healthz`` and ``/readyz`` (load balancers and orchestrators probe them
without credentials), the console page ``/`` (static HTML; everything it loads goes through the
API), and ``/metrics`` when ``metrics_public`` is set. FastAPI's own ``/docs`` and
``/openapi.json`` describe the API and hold no data; they are not API routes and stay open.

A job token, returned by ``POST /invoke``, opens the GET routes of that one job
(``/jobs/{job_id}``, its events, its files), given as ``?token=`` (a browser ``EventSource``
cannot send headers) or as the bearer. It is ``<job id>.<expiry, unix s>.<HMAC-SHA256>``, keyed
by ``token_secret`` or else by a secret derived from the API keys: stateless, so any gateway with
the same configuration verifies any other's tokens, and rotating the keys (or the secret) revokes
every token.

The ecosystem's routes (``/v1/...``, ``/internal/...``) are left to their own routers' dependency
(``gateway.v1.caller``): they take ``X-Internal-Token``, an internal token that
``POST /v1/auth/convert_to_internal_token`` issues for an API key. It is signed like a job token
(``<caller id>.<expiry>.<HMAC>``, under a key of its own derived from the same secret), names the
caller by an id derived from its API key (never the key), and stops working when that key is removed.

Deliberate oddity: this is an app-wide FastAPI dependency, not middleware, so it sees the matched
route's ``job_id``; a router added later is covered without opting in. The body's JSON
syntax (400) and size (413) are therefore checked before the credentials.
"""

import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from factory.errors import PermissionDenied, Unauthenticated
from factory.settings import Settings

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})
METRICS_PATH = "/metrics"
# GET routes under /jobs/ with a ``job_id`` path parameter accept that job's token: status, events, files.
JOB_SCOPED_PREFIX = "/jobs/"
_DERIVATION_LABEL = b"prefab-factory job tokens v1"
# Routes whose routers check credentials themselves (X-Internal-Token, signed URLs): see gateway/v1/caller.py.
ECOSYSTEM_PREFIXES = ("/v1/", "/internal/")
_INTERNAL_LABEL = b"prefab-factory internal tokens v1"
_CALLER_LABEL = b"prefab-factory caller v1\n"


def caller_id(api_key: str) -> str:
    """A stable id for the holder of an API key, safe to use in Redis key names and tokens."""
    return hashlib.sha256(_CALLER_LABEL + api_key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class TokenSigner:
    """Issues and verifies job tokens; pure computation, no Redis."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def derived(self, label: bytes) -> "TokenSigner":
        """A signer for another kind of token: its key derived from this one's, so neither forges the other."""
        return TokenSigner(hmac.new(self._secret, label, hashlib.sha256).digest(), self.ttl_s)

    def _signature(self, job_id: str, expires_s: int) -> str:
        mac = hmac.new(self._secret, f"{job_id}.{expires_s}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, job_id: str, now_s: float | None = None) -> str:
        """A token opening ``job_id`` until ``ttl_s`` from now."""
        expires_s = int(now_s if now_s is not None else time.time()) + self.ttl_s
        return f"{job_id}.{expires_s}.{self._signature(job_id, expires_s)}"

    def verify(self, token: str, now_s: float | None = None) -> str:
        """The job id the token opens; :class:`Unauthenticated` when forged, malformed or expired."""
        parts = token.split(".")
        if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit() and len(parts[1]) <= 12):
            raise Unauthenticated("invalid credentials")
        job_id, expires, signature = parts
        if expires != str(int(expires)):  # one spelling per token: no leading zeros
            raise Unauthenticated("invalid credentials")
        expected = self._signature(job_id, int(expires))
        if not hmac.compare_digest(_digest(signature), _digest(expected)):
            raise Unauthenticated("invalid credentials")
        if int(expires) <= (now_s if now_s is not None else time.time()):
            raise Unauthenticated("the job token has expired")
        return job_id


class Authenticator:
    """Decides, per request, whether its credentials open the matched route."""

    def __init__(self, api_keys: list[str], signer: TokenSigner, open_paths: frozenset[str]) -> None:
        self._key_digests = [_digest(key) for key in api_keys]
        self._caller_ids = frozenset(caller_id(key) for key in api_keys)
        self.signer = signer
        self.open_paths = open_paths
        self.internal_signer = signer.derived(_INTERNAL_LABEL)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Authenticator | None":
        """None when no API keys are configured (auth off)."""
        if not settings.api_keys:
            return None
        if settings.token_secret:
            secret = settings.token_secret.encode()
        else:
            material = "\n".join(sorted(settings.api_keys)).encode()
            secret = hmac.new(_DERIVATION_LABEL, material, hashlib.sha256).digest()
        open_paths = OPEN_PATHS | {METRICS_PATH} if settings.metrics_public else OPEN_PATHS
        return cls(settings.api_keys, TokenSigner(secret, settings.token_ttl_s), open_paths)

    def is_key(self, candidate: str) -> bool:
        """Constant time: every key is compared, digests hide the keys' lengths."""
        given = _digest(candidate)
        matched = False
        for digest in self._key_digests:
            matched |= hmac.compare_digest(given, digest)
        return matched

    def issue_internal(self, api_key: str) -> str:
        """An internal token for the holder of ``api_key`` (:class:`Unauthenticated` for a wrong key)."""
        if not self.is_key(api_key):
            raise Unauthenticated("invalid API key")
        return self.internal_signer.issue(caller_id(api_key))

    def caller_of(self, api_key: str | None, internal_token: str | None) -> str:
        """The caller id an API key or an internal token stands for; :class:`Unauthenticated` otherwise."""
        if api_key is not None and self.is_key(api_key):
            return caller_id(api_key)
        if not internal_token:
            raise Unauthenticated("this endpoint needs X-Internal-Token or Authorization: Bearer <API key>")
        caller = self.internal_signer.verify(internal_token)
        if caller not in self._caller_ids:
            raise Unauthenticated("the internal token's API key is no longer valid")
        return caller

    def check(
        self, method: str, path: str, path_params: Mapping[str, Any], bearer: str | None, token: str | None
    ) -> None:
        """Return if allowed; raise :class:`Unauthenticated` (401) or :class:`PermissionDenied` (403)."""
        if path in self.open_paths or path.startswith(ECOSYSTEM_PREFIXES):
            return
        if bearer is not None and self.is_key(bearer):
            return
        candidate = token or bearer
        if not candidate:
            raise Unauthenticated("this endpoint needs Authorization: Bearer <API key>")
        job_id = self.signer.verify(candidate)
        scoped = path_params.get("job_id")
        if method not in ("GET", "HEAD") or scoped is None or not path.startswith(JOB_SCOPED_PREFIX):
            raise PermissionDenied("a job token opens only its own job's status, events and files")
        if job_id != scoped:
            raise PermissionDenied("this token belongs to another job")


_bearer = HTTPBearer(auto_error=False, description="an API key (or a job's token)")
_query_token = APIKeyQuery(name="token", auto_error=False, description="a job's token, from POST /invoke")


def requirement(authenticator: Authenticator) -> Callable[..., Awaitable[None]]:
    """The app-wide dependency enforcing ``authenticator`` on every route."""

    async def require_auth(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        token: Annotated[str | None, Depends(_query_token)],
    ) -> None:
        path: str = request.scope["path"]
        root_path: str = request.scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        credentials = bearer.credentials if bearer is not None else None
        authenticator.check(request.method, path, request.path_params, credentials, token)

    return require_auth
