"""Runs one invocation inside a work horse, from "started" to exactly one terminal event.

The worker process claims the job and hands the claim over with the request; :meth:`run`
reports how the run left the job (:class:`RunReport`), which tells the worker whether anything
is left to settle.

Order of a run (the worker's claim already marked the job started): check secrets, prepare
the workspace and its input files, iterate the function under its deadline while the publisher
streams each event, store output files (their ``files`` event comes before the terminal one),
then write the terminal event with the job's final record fields. The environment is put back
as it was after each run, so nothing a job set in it reaches the next job of the same horse.

Retries: when the function raised (``UNEXPECTED_ERROR``) and the execution's attempt is not
its last, the runner writes a ``retry`` event instead of the error and the worker puts the job
back on the queue (``factory.reaper``); the stream goes on in the same log with the next
attempt's events. Timeouts, cancels, invalid events and missing secrets are never retried.

If Redis stays away longer than ``redis_outage_s`` the function is stopped, and the job ends
with ``REDIS_UNAVAILABLE`` as soon as Redis answers again.
"""

import logging
import os
import time
import traceback
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
import redis

from factory import reaper, sealing
from factory.catalog import Catalog
from factory.connections import RETRYABLE
from factory.eventlog import (
    APPEND_LUA,
    AppendResult,
    Mode,
    Outcome,
    append_keys,
    parse_append,
    retry_event,
    retry_fields,
    terminal_error_args,
)
from factory.events import (
    INVALID_EVENT,
    MISSING_SECRET,
    REDIS_UNAVAILABLE,
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
from factory.manifest import FunctionSpec
from factory.settings import Settings
from worker.deadline import DeadlineExceeded, deadline
from worker.files import FileBridge, FileError
from worker.invoke import iterate
from worker.loader import LoadedPrefabs
from worker.publisher import EventPublisher, PublisherUnavailable
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
    spare_workspace: Path | None = None  # a work horse's (see ``worker.workspace``)


class RunEnd(StrEnum):
    """How a run left its job, as far as the work horse knows."""

    ENDED = "ended"  # the job's log is closed: by this run's terminal event, or by someone else (cancel)
    RETRY = "retry"  # this run wrote a ``retry`` event: the job must go back on the queue
    SUPERSEDED = "superseded"  # the job belongs to another execution now (or no longer exists)
    OPEN = "open"  # the log may still be open (its events could not all be written): settle it


@dataclass(frozen=True)
class RunReport:
    end: RunEnd
    error_code: str | None = None  # the code of the run's terminal ``error`` (or of the retry's cause)


_END_OF_APPEND = {
    Outcome.APPENDED: RunEnd.ENDED,
    Outcome.DUPLICATE: RunEnd.ENDED,
    Outcome.ALREADY_ENDED: RunEnd.ENDED,
    Outcome.LIMIT_REACHED: RunEnd.OPEN,
    Outcome.UNKNOWN_JOB: RunEnd.SUPERSEDED,
    Outcome.SUPERSEDED: RunEnd.SUPERSEDED,
}


class _Stop(Exception):
    """The job's log closed under the function (canceled, or a limit was hit)."""


@dataclass(frozen=True)
class _End:
    """How the function's run ended: the terminal event to write, and whether another attempt may follow."""

    event: bytes
    retryable: bool = False


def _terminal_for(raw: bytes) -> dict[str, bytes]:
    event = decode(raw)
    status = JobStatus(terminal_status(event))
    if event.type == "done":
        return terminal_fields(status, now_ms(), event.data, None)
    message = event.data if isinstance(event.data, str) else orjson.dumps(event.data).decode()
    return terminal_fields(status, now_ms(), None, ErrorInfo(code=event.error_code or "ERROR", message=message))


def _environ() -> dict[bytes, bytes]:
    """A snapshot of the environment.

    Taken from CPython's own bytes copy behind ``os.environ`` (``_data``, also behind
    ``os.environb``): copying and comparing it costs well under a microsecond, where going through
    the mapping costs ~1 µs per variable, twice a job.
    """
    return dict(os.environb._data)  # type: ignore[attr-defined]


def _restore_environ(saved: dict[bytes, bytes]) -> None:
    """Put the environment back as it was (the job's secrets, what its function set), touching nothing else."""
    if _environ() == saved:
        return
    for name in [name for name in os.environb if name not in saved]:
        del os.environb[name]
    for name, value in saved.items():
        if os.environb.get(name) != value:
            os.environb[name] = value


def _will_retry(end: _End, claim: reaper.Claim) -> bool:
    return end.retryable and claim.attempt < claim.max_attempts


def _error(code: str, message: str) -> _End:
    return _End(error_event(code, message))


class InvocationRunner:
    def __init__(self, runtime: WorkerRuntime, request: InvocationRequest, claim: reaper.Claim) -> None:
        self.runtime = runtime
        self.request = request
        self.claim = claim
        self.workspace = Workspace(runtime.settings.state_dir, request.job_id)

    def run(self) -> RunReport:
        """Run the job to its terminal event (or its retry); never raises for a failure of the prefab."""
        claim = self.claim
        settings = self.runtime.settings
        publisher = EventPublisher(
            self.runtime.redis,
            self.request.job_id,
            max_events=settings.max_events_per_job,
            retention_s=settings.retention_s,
            redis_outage_s=settings.redis_outage_s,
            token=claim.token,
        )
        try:
            end = self._run_function(publisher, claim)
        finally:
            # Removed before the terminal event, so a caller who sees the job end never finds it.
            self.workspace.remove(self.runtime.spare_workspace)
        if end is not None and not publisher.ended.is_set():
            self._finish(publisher, claim, end)
        code = decode(end.event).error_code if end is not None else None
        if isinstance(publisher.failure, PublisherUnavailable):
            return RunReport(self._end_unavailable(claim, publisher.last_seq), REDIS_UNAVAILABLE)
        if publisher.failure is not None:
            logger.error("job's events could not all be written: %s", publisher.failure)
            return RunReport(RunEnd.OPEN, code)
        return RunReport(self._end_of(publisher.final, end is not None and _will_retry(end, claim)), code)

    @staticmethod
    def _end_of(final: AppendResult | None, retrying: bool) -> RunEnd:
        if final is None:
            return RunEnd.OPEN
        if retrying and final.outcome in (Outcome.APPENDED, Outcome.DUPLICATE):
            return RunEnd.RETRY
        return _END_OF_APPEND[final.outcome]

    def _finish(self, publisher: EventPublisher, claim: reaper.Claim, end: _End) -> None:
        """Write the last event: the terminal one, or ``retry`` when another attempt follows."""
        if not _will_retry(end, claim):
            publisher.finish(end.event, _terminal_for(end.event))
            return
        error = decode(end.event)
        reason = error.data if isinstance(error.data, str) else orjson.dumps(error.data).decode()
        code = error.error_code or UNEXPECTED_ERROR
        event = retry_event(claim.attempt + 1, claim.max_attempts, code, reason)
        publisher.finish(event, retry_fields(claim.token, claim.attempt + 1), Mode.RETRY)
        logger.warning("attempt %d of %d failed (%s); retrying", claim.attempt, claim.max_attempts, code)

    def _end_unavailable(self, claim: reaper.Claim, last_seq: int) -> RunEnd:
        """End the job with ``REDIS_UNAVAILABLE``, waiting as long as it takes for Redis to answer."""
        message = (
            f"Redis was unreachable for more than {self.runtime.settings.redis_outage_s:g} s, so the job was stopped; "
            f"events after seq {last_seq} may be missing"
        )
        args = terminal_error_args(
            REDIS_UNAVAILABLE, message, retention_s=self.runtime.settings.retention_s, token=claim.token
        )
        script = self.runtime.redis.register_script(APPEND_LUA)
        delay_s = 0.1
        while True:
            try:
                result = parse_append(script(keys=append_keys(self.request.job_id), args=args))
            except RETRYABLE:
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
                continue
            logger.error("job stopped: Redis unreachable too long (append: %s)", result.outcome.name)
            return _END_OF_APPEND[result.outcome]

    def _spec(self) -> FunctionSpec:
        target = self.runtime.catalog.resolve(self.request.prefab_id, self.request.function_name)
        return target.function

    def _run_function(self, publisher: EventPublisher, claim: reaper.Claim) -> _End | None:
        """Everything between "started" and the terminal event; returns how it ended (None: the log closed)."""
        spec = self._spec()
        function = self.runtime.prefabs.functions.get((self.request.prefab_id, spec.name))
        if function is None:
            reason = self.runtime.prefabs.broken.get(self.request.prefab_id, "not loaded by this worker")
            return _error(UNEXPECTED_ERROR, f"prefab could not be loaded: {reason}")
        secrets, missing = self._secrets(spec)
        if missing:
            return _error(MISSING_SECRET, f"required secret(s) not configured: {', '.join(missing)}")
        self.workspace.create(self.runtime.spare_workspace)
        try:
            self.runtime.files.fetch_inputs(self.request, self.workspace)
        except FileError as exc:
            return _error(exc.code, str(exc))
        saved_env = _environ()
        os.environ.update(secrets)
        try:
            with self.workspace.entered():
                terminal = self._iterate(function, publisher)
        finally:
            _restore_environ(saved_env)
        if terminal is None or publisher.ended.is_set():
            return None
        if not _will_retry(terminal, claim):  # a failed attempt that runs again keeps no outputs
            try:
                files_event = self.runtime.files.store_outputs(self.request, self.workspace)
            except FileError as exc:
                return _error(exc.code, str(exc))
            if files_event is not None:
                publisher.publish(files_event)
        return terminal

    def _secrets(self, spec: FunctionSpec) -> tuple[dict[str, str], list[str]]:
        """The declared secrets' values: the caller's own (sealed into the request) ahead of the worker's."""
        callers = sealing.unseal(self.runtime.settings, self.request.sealed_secrets)
        values: dict[str, str] = {}
        missing: list[str] = []
        for secret in spec.secrets:
            value = callers.get(secret.name, self.runtime.secrets.get(secret.name))
            if value is not None:
                values[secret.name] = value
            elif secret.required:
                missing.append(secret.name)
        return values, missing

    def _iterate(self, function: Any, publisher: EventPublisher) -> _End | None:
        """Iterate under the deadline; how the function ended, or None if the log closed."""
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
                        return _End(raw)
                    publisher.publish(raw)
        except _Stop:
            return None
        except DeadlineExceeded:
            return _error(TIMEOUT, f"the job exceeded its timeout of {self.request.timeout_s:g} s")
        except InvalidEvent as exc:
            return _error(INVALID_EVENT, str(exc))
        except Exception as exc:  # the prefab raised: report it, keep the worker alive
            logger.error("prefab raised:\n%s", traceback.format_exc())
            return _End(error_event(UNEXPECTED_ERROR, f"{type(exc).__name__}: {exc}"), retryable=True)
        finally:
            values.close()
        return _End(orjson.dumps({"type": "done", "data": None}))
