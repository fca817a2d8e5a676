"""The express lane: a call's own requests served without FastAPI's per-request machinery.

``POST /invoke``, the seed's ``POST /invoke/{function}`` (and ``/invoke/{prefab}/{function}``) and
``GET /jobs/{id}/events`` are on every call's path to its first event. FastAPI's layers for one
request (its middleware, routing, dependencies, parameter and body handling) took about 0.3 ms of
the ~3.5 ms to a first event on the benchmark's machine (``bench/RESULTS.md``). This ASGI layer, the
innermost middleware, serves those requests when they are plain: no query string, no root path, a
JSON body that validates, and, with auth on, an ``Authorization: Bearer`` credential. It calls the
very functions the routes call (``gateway.routes_invoke``, ``gateway.routes_jobs``), and their
refusals (an unknown function, inputs against the manifest, a wrong credential, a full queue) and
failures are answered by the handlers the app's would reach (:func:`gateway.errors.answer`).

Everything else goes to the app unchanged (the body read here is replayed to it): another content
type, a body that does not validate (the app's messages name fields its own way), any other
method or path. The routes stay the one definition of each endpoint and its OpenAPI schema. A
call is never enqueued twice: nothing is handed to the app once the lane began its answer.
"""

from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import errors
from gateway.deps import GatewayState
from gateway.routes_invoke import accept_call, answer_seed_call, prepare_call, prepare_seed_call
from gateway.routes_jobs import events_response, last_seq_of
from gateway.schemas import InvokeBody, SeedInvokeBody

Answer = Callable[[], Awaitable[Response]]  # the route's answer to a request checked and prepared


class _NotExpress(Exception):
    """The request is the app's: it is handed over unchanged."""


class ExpressLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = _kind(scope)
        if kind is None:
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        request = Request(scope, receive)
        answer: Answer | None
        try:
            answer = await self._prepare(kind, request, read)
        except (_NotExpress, ValidationError):
            answer = None  # the app's, with its own parsing and its messages
        except Exception as exc:  # a refusal, nothing written: answered by the handlers the app's would reach
            refusal = exc
            answer = lambda: errors.answer(request, refusal)  # noqa: E731
        if answer is None:
            await self.app(scope, _replaying(read, receive), send)
            return
        try:
            response = await answer()
        except Exception as exc:  # the job may exist now: the app's handlers answer, nothing runs twice
            response = await errors.answer(request, exc)
        await response(scope, receive, send)

    async def _prepare(self, kind: str, http: Request, read: list[Message]) -> Answer:
        """Check the request as the route would and prepare its call; :class:`_NotExpress` (or the
        failure) when the app must serve it. Nothing is written to the job store here."""
        state: GatewayState = http.scope["state"]["gateway"]
        path: str = http.scope["path"]
        parts = path.split("/")
        if kind == "events":
            job_id = parts[2]
            _check_auth(state, http, path, {"job_id": job_id})
            last_seq = last_seq_of(http.headers.get("last-event-id"), None)
            return lambda: events_response(state, job_id, last_seq)
        _check_auth(state, http, path, {})
        body = await _json_body(http, read)
        base_url = str(http.base_url)
        if kind == "invoke":
            call = InvokeBody.model_validate_json(body)
            target, request = await prepare_call(state, call.prefab_id, call.function_name, call)
            return lambda: accept_call(state, base_url, target, request)
        seed = SeedInvokeBody.model_validate_json(body)
        prefab_id, function_name = (None, parts[2]) if len(parts) == 3 else (parts[2], parts[3])
        target, request = await prepare_seed_call(state, prefab_id, function_name, seed)
        return lambda: answer_seed_call(state, base_url, target, request)


def _kind(scope: Scope) -> str | None:
    """Which of the lane's requests this is (None: the app's)."""
    if scope["type"] != "http" or scope.get("query_string") or scope.get("root_path"):
        return None
    parts = scope["path"].split("/")
    if scope["method"] == "POST" and len(parts) >= 2 and parts[1] == "invoke":
        if len(parts) == 2:
            return "invoke"
        if len(parts) in (3, 4) and all(parts[2:]):
            return "seed"
    if scope["method"] == "GET" and len(parts) == 4 and parts[1] == "jobs" and parts[2] and parts[3] == "events":
        return "events"
    return None


def _check_auth(state: GatewayState, http: Request, path: str, path_params: dict[str, str]) -> None:
    """Pass when auth is off, or the request's bearer credential is let through by the authenticator."""
    if state.auth is None:
        return
    scheme, _, credentials = (http.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        raise _NotExpress
    state.auth.check(http.method, path, path_params, credentials, None)


async def _json_body(http: Request, read: list[Message]) -> bytes:
    """The whole body of a JSON request (each message kept in ``read``, for the app if it serves it)."""
    content_type = http.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise _NotExpress
    chunks: list[bytes] = []
    while True:
        message = await http.receive()
        read.append(message)
        if message["type"] != "http.request":
            raise _NotExpress  # the client left (or a limit cut the body): the app sees it as it was
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(read: list[Message], receive: Receive) -> Receive:
    """``receive`` as the app must see it: what the lane read first, in order, then the rest."""
    pending = list(read)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
