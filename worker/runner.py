"""Runs one invocation inside a work horse, from "started" to exactly one terminal event.

Order of a run: mark the job started (unless it was canceled while queued), check secrets,
prepare the workspace and its input files, iterate the function under its deadline while the
publisher streams each event, store output files (their ``files`` event comes before the
terminal one), then write the terminal event with the job's final record fields.
"""

import logging
import os
import traceback
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from factory.catalog import Catalog
from factory.eventlog import START_LUA
from factory.events import (
    INVALID_EVENT,
    MISSING_SECRET,
    TIMEOUT,
    UNEXPECTED_ERROR,
    ErrorInfo,
    InvalidEvent,
    decode,
    encode_yielded,
    error_event,
    is_terminal,
    terminal_status,
)
from factory.jobs import InvocationRequest, JobStatus, now_ms, terminal_fields
from factory.keys import job_key
from factory.manifest import FunctionSpec
from factory.settings import Settings
from worker.deadline import DeadlineExceeded, deadline
from worker.files import FileBridge, FileError
from worker.invoke import iterate
from worker.loader import LoadedPrefabs
from worker.publisher import EventPublisher
from worker.workspace import Workspace

logger = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    """Everything a work horse needs, built once when the worker starts."""

    settings: Settings
    redis: redis.Redis
    catalog: Catalog
    prefabs: LoadedPrefabs
    secrets: dict[str, str]
    files: FileBridge
    worker_name: str = ""


class _Stop(Exception):
    """The job's log closed under the function (canceled, or a limit was hit)."""


def _terminal_for(raw: bytes) -> dict[str, bytes]:
    event = decode(raw)
    status = JobStatus(terminal_status(event))
    if event.type == "done":
        return terminal_fields(status, now_ms(), event.data, None)
    message = event.data if isinstance(event.data, str) else orjson.dumps(event.data).decode()
    return terminal_fields(status, now_ms(), None, ErrorInfo(code=event.error_code or "ERROR", message=message))


def _error(code: str, message: str) -> bytes:
    return error_event(code, message)


class InvocationRunner:
    def __init__(self, runtime: WorkerRuntime, request: InvocationRequest, attempt: int = 1) -> None:
        self.runtime = runtime
        self.request = request
        self.attempt = attempt
        self.workspace = Workspace(runtime.settings.state_dir, request.job_id)

    def run(self) -> None:
        """Run the job to its terminal event; never raises for a failure of the prefab."""
        if not self._mark_started():
            logger.info("job already ended before it started; skipping")
            return
        settings = self.runtime.settings
        publisher = EventPublisher(
            self.runtime.redis,
            self.request.job_id,
            max_events=settings.max_events_per_job,
            retention_s=settings.retention_s,
            redis_outage_s=settings.redis_outage_s,
        )
        try:
            terminal = self._run_function(publisher)
            if terminal is not None and not publisher.ended.is_set():
                publisher.finish(terminal, _terminal_for(terminal))
        finally:
            self.workspace.remove()
        if publisher.failure is not None:
            logger.error("job's events could not all be written: %s", publisher.failure)

    def _mark_started(self) -> bool:
        script = self.runtime.redis.register_script(START_LUA)
        fields: dict[str, bytes] = {
            "status": orjson.dumps(JobStatus.STARTED.value),
            "started_ms": orjson.dumps(now_ms()),
            "worker": orjson.dumps(self.runtime.worker_name),
            "attempt": orjson.dumps(self.attempt),
        }
        args = [item for pair in fields.items() for item in pair]
        return int(script(keys=[job_key(self.request.job_id)], args=args)) == 1

    def _spec(self) -> FunctionSpec:
        target = self.runtime.catalog.resolve(self.request.prefab_id, self.request.function_name)
        return target.function

    def _run_function(self, publisher: EventPublisher) -> bytes | None:
        """Everything between "started" and the terminal event; returns that event."""
        spec = self._spec()
        function = self.runtime.prefabs.functions.get((self.request.prefab_id, spec.name))
        if function is None:
            reason = self.runtime.prefabs.broken.get(self.request.prefab_id, "not loaded by this worker")
            return _error(UNEXPECTED_ERROR, f"prefab could not be loaded: {reason}")
        secrets, missing = self._secrets(spec)
        if missing:
            return _error(MISSING_SECRET, f"required secret(s) not configured: {', '.join(missing)}")
        self.workspace.create()
        try:
            self.runtime.files.fetch_inputs(self.request, self.workspace)
        except FileError as exc:
            return _error(exc.code, str(exc))
        saved_env = dict(os.environ)
        os.environ.update(secrets)
        try:
            with self.workspace.entered():
                terminal = self._iterate(function, publisher)
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        if terminal is None or publisher.ended.is_set():
            return None
        try:
            files_event = self.runtime.files.store_outputs(self.request, self.workspace)
        except FileError as exc:
            return _error(exc.code, str(exc))
        if files_event is not None:
            publisher.publish(files_event)
        return terminal

    def _secrets(self, spec: FunctionSpec) -> tuple[dict[str, str], list[str]]:
        values: dict[str, str] = {}
        missing: list[str] = []
        for secret in spec.secrets:
            value = self.runtime.secrets.get(secret.name)
            if value is not None:
                values[secret.name] = value
            elif secret.required:
                missing.append(secret.name)
        return values, missing

    def _iterate(self, function: Any, publisher: EventPublisher) -> bytes | None:
        """Iterate under the deadline; the terminal event to write, or None if the log closed."""
        max_bytes = self.runtime.settings.max_event_bytes
        values = iterate(function, self.request.inputs)
        try:
            with deadline(self.request.timeout_s):
                for value in values:
                    if publisher.ended.is_set():
                        raise _Stop
                    event_type, raw = encode_yielded(value)
                    if len(raw) > max_bytes:
                        raise InvalidEvent(f"event of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
                    if is_terminal(event_type):
                        return raw
                    publisher.publish(raw)
        except _Stop:
            return None
        except DeadlineExceeded:
            return _error(TIMEOUT, f"the job exceeded its timeout of {self.request.timeout_s:g} s")
        except InvalidEvent as exc:
            return _error(INVALID_EVENT, str(exc))
        except Exception as exc:  # the prefab raised: report it, keep the worker alive
            logger.error("prefab raised:\n%s", traceback.format_exc())
            return _error(UNEXPECTED_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            values.close()
        return orjson.dumps({"type": "done", "data": None})
