"""The contract's error shape (CONTRACT §3), checked the same way by every test that expects an error."""

from typing import Any

import httpx


def error_shape_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why a response is not ``{"error": {"code", "message", "details"?}}``, or None when it is."""
    if not content_type.startswith("application/json"):
        return f"{status} has content-type {content_type!r}"
    try:
        document = httpx.Response(status, content=body).json()
    except ValueError:
        return f"{status} body is not JSON: {body[:200]!r}"
    if not isinstance(document, dict) or set(document) != {"error"} or not isinstance(document["error"], dict):
        return f"{status} body is not {{'error': {{...}}}}: {document!r}"
    error = document["error"]
    if not set(error) <= {"code", "message", "details"}:
        return f"{status} error has unexpected keys: {sorted(error)}"
    code, message = error.get("code"), error.get("message")
    if not (isinstance(code, str) and code.isupper() and isinstance(message, str) and message):
        return f"{status} error lacks a code or a message: {error!r}"
    if "Traceback" in message or 'File "' in message:
        return f"{status} error leaks a traceback: {message!r}"
    return None


def ecosystem_error_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why a response is not the ecosystem's ``{"detail": {"error_code", "message", ...}}``, or None when it is."""
    if not content_type.startswith("application/json"):
        return f"{status} has content-type {content_type!r}"
    try:
        document = httpx.Response(status, content=body).json()
    except ValueError:
        return f"{status} body is not JSON: {body[:200]!r}"
    if not isinstance(document, dict) or set(document) != {"detail"} or not isinstance(document["detail"], dict):
        return f"{status} body is not {{'detail': {{...}}}}: {document!r}"
    code, message = document["detail"].get("error_code"), document["detail"].get("message")
    if not (isinstance(code, str) and code.isupper() and isinstance(message, str) and message):
        return f"{status} detail lacks an error_code or a message: {document!r}"
    if "Traceback" in message or 'File "' in message:
        return f"{status} error leaks a traceback: {message!r}"
    return None


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the contract's error shape with this status and code; returns the error."""
    assert response.status_code == status, response.text
    problem = error_shape_problem(response.status_code, response.headers.get("content-type", ""), response.content)
    assert problem is None, problem
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


def assert_ecosystem_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The ecosystem's error shape on /v1 and /internal: ``{"detail": {"error_code", "message", ...}}``."""
    assert response.status_code == status, response.text
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    document = response.json()
    assert set(document) == {"detail"} and isinstance(document["detail"], dict), document
    detail: dict[str, Any] = document["detail"]
    assert detail["error_code"] == code and isinstance(detail["message"], str) and detail["message"], detail
    return detail
