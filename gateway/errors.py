"""Maps every error to the contract's JSON shape ``{"error": {"code", "message", "details"?}}``.

The only place that knows HTTP status codes for factory errors. Unexpected exceptions are
logged with their traceback and answered with a bare 500 that leaks nothing.

Deliberate oddity: the ecosystem's routes (``/v1/...``, ``/internal/...``) answer the same errors
in the shape its published client reads, FastAPI's ``{"detail": {"error_code", "message", ...}}``,
with a dict of details (e.g. ``limit``/``used``/``quota_type``) merged into ``detail``.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from factory.errors import FactoryError, ServiceUnavailable, Unauthenticated
from gateway.auth import ECOSYSTEM_PREFIXES
from gateway.schemas import ErrorResponse

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "TOO_MANY_REQUESTS",
    503: "SERVICE_UNAVAILABLE",
}


class _ErrorJSON(JSONResponse):
    """Echoed input may hold text UTF-8 cannot encode (a lone surrogate): replace it, never fail.

    It keeps its error code, so the handlers can count refusals by code.
    """

    error_code = "ERROR"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    response = _ErrorJSON({"error": body}, status_code=status, headers=headers)
    response.error_code = code
    return response


def ecosystem_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The ecosystem's error shape: ``{"detail": {"error_code", "message", ...details}}``."""
    detail: dict[str, Any] = {"error_code": code, "message": message}
    if isinstance(details, dict):
        detail.update({k: v for k, v in details.items() if k not in detail})
    elif details is not None:
        detail["details"] = details
    return _ErrorJSON({"detail": detail}, status_code=status, headers=headers)


def _respond(
    request: Request, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if request.url.path.startswith(ECOSYSTEM_PREFIXES):
        return ecosystem_response(status, code, message, details, headers)
    return error_response(status, code, message, details, headers)


async def _factory_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FactoryError)
    headers = None
    if isinstance(exc, ServiceUnavailable) and exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}
    return _respond(request, exc.status_code, exc.code, exc.message, exc.details, headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _json_problem(error: Any) -> dict[str, str]:
    loc = tuple(error.get("loc", ()))
    if len(loc) == 2 and isinstance(loc[1], int):  # FastAPI's decode error: ("body", character offset)
        reason = (error.get("ctx") or {}).get("error") or error.get("msg", "")
        return {"field": "body", "message": f"{reason} (at character {loc[1]})"}
    return {"field": _field(loc), "message": str(error.get("msg", ""))}


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    invalid_json = [_json_problem(e) for e in errors if e.get("type") == "json_invalid"]
    if invalid_json:
        return _respond(request, 400, "BAD_REQUEST", "the request body is not valid JSON", invalid_json)
    if any(tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes) for e in errors):
        # FastAPI hands the raw bytes on when the Content-Type is not JSON (curl -d sends a form type).
        return _respond(
            request, 415, "UNSUPPORTED_MEDIA_TYPE", "send the body as JSON, with Content-Type: application/json"
        )
    details = [{"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))} for e in errors]
    return _respond(request, 422, "VALIDATION_ERROR", "the request does not match the API", details)


def _status_name(status: int) -> str:
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code) or _status_name(exc.status_code)
    return _respond(request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("Redis unavailable while serving %s: %s", request.url.path, exc)
    return _respond(request, 503, "SERVICE_UNAVAILABLE", "the job store is unreachable", headers={"Retry-After": "2"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(request, 500, "INTERNAL_SERVER_ERROR", "internal error")


def documented_responses(auth: bool) -> dict[int | str, dict[str, Any]]:
    """Errors any operation may answer, for the OpenAPI document (422 in our shape, not FastAPI's)."""
    responses: dict[int | str, dict[str, Any]] = {
        422: {"model": ErrorResponse, "description": "the request does not match the API or the manifest"},
        500: {"model": ErrorResponse, "description": "internal error (details are only logged)"},
    }
    if auth:
        responses[401] = {"model": ErrorResponse, "description": "missing, wrong or expired credentials"}
        responses[403] = {"model": ErrorResponse, "description": "a job token used beyond its own job"}
    return responses


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def _counted(handler: Handler) -> Handler:
    """The handler, counting each answer in ``factory_requests_refused_total`` (and Redis failures)."""

    async def counting(request: Request, exc: Exception) -> JSONResponse:
        response = await handler(request, exc)
        state = getattr(request.state, "gateway", None)  # absent only outside the lifespan
        if state is not None:
            state.metrics.requests_refused.labels(code=getattr(response, "error_code", "ERROR")).inc()
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                state.metrics.redis_errors.labels(where="request").inc()
        return response

    return counting


# Each failure's handler, the most specific first (none of these classes derives from another but Exception).
_HANDLERS: tuple[tuple[type[Exception], Handler], ...] = (
    (FactoryError, _counted(_factory_error)),
    (RequestValidationError, _counted(_request_validation)),
    (StarletteHTTPException, _counted(_http_error)),
    (RedisConnectionError, _counted(_redis_down)),
    (RedisTimeoutError, _counted(_redis_down)),
    (Exception, _counted(_unexpected)),
)


def install(app: FastAPI) -> None:
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)


async def answer(request: Request, exc: Exception) -> JSONResponse:
    """The response the app's handlers give ``exc``, for a request served outside its routes (``gateway.express``)."""
    handler = next(handler for kind, handler in _HANDLERS if isinstance(exc, kind))
    return await handler(request, exc)
