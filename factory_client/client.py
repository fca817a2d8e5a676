"""FactoryClient: the factory's HTTP API from Python (sync, on httpx), with a self-resuming event iterator.

:meth:`FactoryClient.events` reads ``GET /jobs/{id}/events`` and, when the connection drops
or ends before the terminal event, reconnects with ``Last-Event-ID`` set to the last ``seq``
it yielded, so the caller sees every event once, in order, with no gap. It waits between
attempts as the stream's ``retry:`` field says (else a short exponential backoff), gives up
after ``max_reconnects`` attempts in a row without a new event, and stops at the terminal
``done``/``error`` event or on ``204 No Content`` (the job's stream had already ended).

The response models mirror the gateway's HTTP contract on purpose rather than importing it:
the client must not depend on the gateway package, and it ignores fields it does not know.
"""

import logging
import time
from collections.abc import Generator, Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import EventSource, SSEError
from pydantic import BaseModel, ConfigDict, Field

from factory.events import is_terminal

logger = logging.getLogger(__name__)

# Answers on which a reconnect is worth trying: the gateway or the Redis behind it is briefly away.
_TRANSIENT_STATUS = frozenset({502, 503, 504})


class FactoryClientError(Exception):
    """An error answer of the API (``{"error": {"code", "message", "details"?}}``) or a lost connection.

    ``status`` is the HTTP status, or None when no answer came (``code`` is then ``CONNECTION_ERROR``).
    """

    def __init__(self, status: int | None, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class InvokeAccepted(_Lenient):
    """``202`` answer of ``POST /invoke``."""

    job_id: str
    status: str
    events_url: str
    status_url: str
    token: str | None = None


class JobError(_Lenient):
    code: str
    message: str


class JobView(_Lenient):
    """``GET /jobs/{id}``."""

    job_id: str
    prefab_id: str
    function_name: str
    status: str
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None
    output: Any = None
    error: JobError | None = None
    files: dict[str, list[str]] | None = None
    last_event_id: int = 0


class PrefabSummary(_Lenient):
    """One entry of ``GET /prefabs``."""

    id: str | None = None
    path: str | None = None
    status: str | None = None
    version: str | None = None
    name: str | None = None
    description: str | None = None
    functions: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    versions: list[dict[str, Any]] = Field(default_factory=list, description="each version's state and reason")


class DeploymentView(_Lenient):
    deployment_id: str
    prefab_id: str
    version: str
    state: str
    reason: str | None = None
    job_id: str | None = None


class UploadedFile(_Lenient):
    """``201`` answer of ``POST /files``: pass ``ref`` in a call's ``files``."""

    file_id: str
    name: str
    size: int
    ref: str


class StreamedEvent(BaseModel):
    """One event of a job's stream: its ``seq`` (the SSE ``id``) and the event itself."""

    model_config = ConfigDict(frozen=True)

    seq: int
    event: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.event.get("type", ""))

    @property
    def data(self) -> Any:
        return self.event.get("data")

    @property
    def is_terminal(self) -> bool:
        return is_terminal(self.type)


class _Retry(Exception):
    """The stream ended or broke before its terminal event: reconnect."""


class FactoryClient:
    """The factory's HTTP API: invoke, job, cancel, prefabs, events. Use it as a context manager."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 30.0,
        *,
        stream_read_timeout_s: float = 60.0,
        max_reconnects: int = 10,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.stream_read_timeout_s = stream_read_timeout_s
        self.max_reconnects = max_reconnects
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            trust_env=trust_env,
            # Drop idle connections before servers commonly do (5 s), so a request never races a close.
            limits=httpx.Limits(keepalive_expiry=4.0),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def invoke(
        self,
        function_name: str,
        inputs: dict[str, Any] | None = None,
        prefab_id: str | None = None,
        files: dict[str, list[str]] | None = None,
        retries: int | None = None,
        version: str | None = None,
    ) -> InvokeAccepted:
        """Queue a call (``POST /invoke``); its events are read with :meth:`events`."""
        body: dict[str, Any] = {"function_name": function_name, "inputs": inputs or {}}
        if prefab_id is not None:
            body["prefab_id"] = prefab_id
        if version is not None:
            body["version"] = version
        if files:
            body["files"] = files
        if retries is not None:
            body["retries"] = retries
        return InvokeAccepted.model_validate(self._request("POST", "/invoke", json=body))

    def deploy(self, wheel: Path, prefab_id: str, version: str, signature: str | None = None) -> DeploymentView:
        """Deploy a prefab wheel (``POST /v1/deploy``); follow its build with :meth:`events` of its ``job_id``."""
        headers = {"X-Hub-Signature-256": signature} if signature else {}
        with wheel.open("rb") as handle:
            answer = self._request(
                "POST",
                "/v1/deploy",
                data={"prefab_id": prefab_id, "version": version},
                files={"whl_file": (wheel.name, handle, "application/octet-stream")},
                headers=headers,
            )
        return DeploymentView.model_validate(answer)

    def deployment(self, deployment_id: str) -> DeploymentView:
        """A deployment's record (``GET /v1/deployments/{id}``)."""
        path = "/v1/deployments/" + quote(deployment_id, safe="")
        return DeploymentView.model_validate(self._request("GET", path))

    def deployments(self, prefab_id: str | None = None) -> list[DeploymentView]:
        params = {"prefab_id": prefab_id} if prefab_id else {}
        answer = self._request("GET", "/v1/deployments", params=params)
        return [DeploymentView.model_validate(item) for item in answer.get("deployments", [])]

    def undeploy(self, deployment_id: str) -> DeploymentView:
        """Retire a deployment (``DELETE /v1/deployments/{id}``)."""
        path = "/v1/deployments/" + quote(deployment_id, safe="")
        return DeploymentView.model_validate(self._request("DELETE", path))

    def job(self, job_id: str) -> JobView:
        """The job's status and, once it ended, its output or error (``GET /jobs/{id}``)."""
        return JobView.model_validate(self._request("GET", _job_path(job_id)))

    def cancel(self, job_id: str) -> JobView:
        """Cancel the job (``POST /jobs/{id}/cancel``); a running one ends with ``error``/``CANCELED``."""
        return JobView.model_validate(self._request("POST", _job_path(job_id, "cancel")))

    def upload(self, path: Path) -> UploadedFile:
        """Upload one input file (``POST /files``); its ``ref`` goes in :meth:`invoke`'s ``files``."""
        with path.open("rb") as content:
            answer = self._request("POST", "/files", files={"file": (path.name, content)}, timeout=None)
        return UploadedFile.model_validate(answer)

    def jobs(
        self, limit: int = 50, status: str | None = None, prefab_id: str | None = None, function_name: str | None = None
    ) -> list[JobView]:
        """The most recent jobs, newest first, of the given status, prefab and function when given (``GET /jobs``)."""
        params: dict[str, str | int] = {"limit": limit}
        filters = {"status": status, "prefab_id": prefab_id, "function_name": function_name}
        params.update({name: value for name, value in filters.items() if value is not None})
        answer = self._request("GET", "/jobs", params=params)
        return [JobView.model_validate(job) for job in answer.get("jobs", [])]

    def prefabs(self) -> list[PrefabSummary]:
        """The prefabs the gateway serves, loaded and broken (``GET /prefabs``)."""
        answer = self._request("GET", "/prefabs")
        return [PrefabSummary.model_validate(item) for item in answer.get("prefabs", [])]

    def events(
        self, job_id: str, last_event_id: int | None = None, token: str | None = None
    ) -> Iterator[StreamedEvent]:
        """The job's events after ``last_event_id`` (all when None) up to the terminal one, resuming by itself.

        ``token`` is the one ``invoke`` returned, for a caller without the API key.
        """
        last_seq = last_event_id
        retry_s: float | None = None
        failures = 0
        while True:
            stream = self._read_stream(job_id, last_seq, token)
            try:
                for streamed, retry_ms in stream:
                    if retry_ms is not None:
                        retry_s = retry_ms / 1000
                    if streamed is None:
                        continue
                    failures = 0
                    last_seq = streamed.seq
                    yield streamed
                    if streamed.is_terminal:
                        return
                return  # 204: the stream had already ended
            except _Retry as reason:
                failures += 1
                if failures > self.max_reconnects:
                    raise FactoryClientError(
                        None, "CONNECTION_ERROR", f"event stream of job {job_id} lost: {reason.__cause__ or reason}"
                    ) from reason
                delay_s = self._delay_s(failures, retry_s)
                logger.info(
                    "event stream of job %s broke (%s); resuming after seq %s in %.2f s",
                    job_id,
                    reason.__cause__ or reason,
                    last_seq,
                    delay_s,
                )
                time.sleep(delay_s)
            finally:
                stream.close()  # closes the response at once when the caller stops early

    def _delay_s(self, failures: int, retry_s: float | None) -> float:
        base = retry_s if retry_s is not None else self.backoff_base_s
        return max(base, min(self.backoff_cap_s, base * 2.0 ** (failures - 1)))

    def _read_stream(
        self, job_id: str, last_seq: int | None, token: str | None
    ) -> Generator[tuple[StreamedEvent | None, int | None], None, None]:
        """One connection: (event or None, retry field or None) per SSE message; empty for 204.

        Raises :class:`_Retry` when the connection fails or ends before the terminal event.
        """
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_seq is not None:
            headers["Last-Event-ID"] = str(last_seq)
        timeout = httpx.Timeout(self._http.timeout.connect, read=self.stream_read_timeout_s)
        params = {"token": token} if token else None
        url = _job_path(job_id, "events")
        try:
            with self._http.stream("GET", url, headers=headers, params=params, timeout=timeout) as response:
                if response.status_code == 204:
                    return
                if response.status_code in _TRANSIENT_STATUS:
                    response.read()
                    raise _Retry(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response)
                for sse in EventSource(response).iter_sse():
                    if not sse.data:  # a message with only retry: (keep-alive comments never get here)
                        yield None, sse.retry
                        continue
                    streamed = _streamed_event(sse.id, sse.data, last_seq)
                    if last_seq is not None and streamed.seq <= last_seq:
                        continue  # already seen: a gateway must not repeat, but never hand it out twice
                    last_seq = streamed.seq
                    yield streamed, sse.retry
                    if streamed.is_terminal:
                        return
        except httpx.TransportError as exc:  # connect, read and protocol errors, timeouts
            raise _Retry(type(exc).__name__) from exc
        except SSEError as exc:
            raise FactoryClientError(None, "BAD_STREAM", str(exc)) from exc
        raise _Retry("the stream ended before its terminal event")

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise FactoryClientError(None, "CONNECTION_ERROR", f"{method} {self._http.base_url}{path}: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response)
        if not response.content:
            return {}
        body = response.json()
        if not isinstance(body, dict):
            raise FactoryClientError(response.status_code, "BAD_RESPONSE", f"expected a JSON object from {path}")
        return body


def _job_path(job_id: str, *rest: str) -> str:
    """``/jobs/{id}/...`` with the id escaped, so no id can name another path."""
    return "/".join(["/jobs", quote(job_id, safe=""), *rest])


def _streamed_event(sse_id: str, data: str, last_seq: int | None) -> StreamedEvent:
    """Parse one SSE message; a frame without ``id`` gets the next seq after the last one."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FactoryClientError(None, "BAD_STREAM", f"event data is not JSON: {data[:200]!r}") from exc
    if not isinstance(event, dict):
        raise FactoryClientError(None, "BAD_STREAM", f"event data is not a JSON object: {data[:200]!r}")
    try:
        seq = int(sse_id) if sse_id else (last_seq or 0) + 1
    except ValueError as exc:
        raise FactoryClientError(None, "BAD_STREAM", f"event id is not an integer: {sse_id!r}") from exc
    return StreamedEvent(seq=seq, event=event)


def _api_error(response: httpx.Response) -> FactoryClientError:
    """The error an error answer describes, whatever its body."""
    try:
        body = response.json()
        if "detail" in body and "error" not in body:  # the ecosystem's shape (/v1, /internal)
            detail = body["detail"]
            code, message = detail.get("error_code", f"HTTP_{response.status_code}"), detail.get("message")
            return FactoryClientError(response.status_code, str(code), str(message), detail.get("details"))
        error = body["error"]
        return FactoryClientError(response.status_code, str(error["code"]), str(error["message"]), error.get("details"))
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()[:500] or response.reason_phrase
        return FactoryClientError(response.status_code, f"HTTP_{response.status_code}", text)
