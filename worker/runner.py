"""Runs one invocation inside a work horse, from "started" to exactly one terminal event.

The worker process claims the job and hands the claim over with the request and its deadlines
(``worker.deadlines``); :meth:`run` reports how the run left the job (:class:`RunReport`, a
``worker.outcomes.RunOutcome``), which tells the worker whether anything is left to settle.

Order of a run (the worker's claim already marked the job started): check secrets, prepare
the workspace and its input files, iterate the function under its timeout while the publisher
streams each event, store output files (their ``files`` event comes before the terminal one),
then write the terminal event with the job's final record fields. The environment is put back
as it was after each run, so nothing a job set in it reaches the next job of the same horse.

Retries: when the function raised (``UNEXPECTED_ERROR``) and the execution's attempt is not
its last, the runner writes a ``retry`` event instead of the error and the worker puts the job
back on the queue (``factory.store.executions``); the stream goes on in the same log with the next
attempt's events. Timeouts, cancels, invalid events and missing secrets are never retried.

If Redis stays away longer than ``redis_outage_s`` the function is stopped, and the job ends
with ``REDIS_UNAVAILABLE`` as soon as Redis answers again.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from factory import sealing
from factory.connections import RETRYABLE
from factory.deployments import Deployment
from factory.events import (
    DEPLOYMENT_FAILED,
    INVALID_EVENT,
    MISSING_SECRET,
    REDIS_UNAVAILABLE,
    RESOURCE_EXHAUSTED,
    TIMEOUT,
    UNEXPECTED_ERROR,
    WORKER_LOST,
    ErrorInfo,
    InvalidEvent,
    accept_encoded,
    decode,
    error_event,
    is_terminal,
    terminal_status,
)
from factory.jobs import InvocationRequest, JobStatus, now_ms, terminal_fields
from factory.logs import current_job_fields
from factory.manifest import FunctionSpec
from factory.settings import Settings
from factory.store import executions
from factory.store.eventlog import (
    AppendResult,
    Mode,
    Outcome,
    append_keys,
    parse_append,
    retry_event,
    retry_fields,
    terminal_error_args,
)
from factory.store.scripts import APPEND_LUA
from factory.store.wire import Wire
from worker import builder
from worker.deadlines import Deadlines
from worker.files import FileBridge, FileError
from worker.outcomes import RunOutcome
from worker.provision import Provisioner, ProvisionError
from worker.publisher import EventPublisher, PublisherUnavailable
from worker.runners import Runner, RunnerFailed, RunnerGone
from worker.workspace import Workspace

logger = logging.getLogger(__name__)

# How often a quiet function's run looks whether its publisher found the stream closed (no Redis
# read: a stream ended from outside while the function is quiet is the worker's, ``worker.endwatch``).
PUBLISHER_CHECK_S = 0.1
DRAIN_S = 5.0  # how long a generator closed after its terminal event may take to clean up


@dataclass
class WorkerRuntime:
    """Everything a work horse needs, built once when the worker starts."""

    settings: Settings
    redis: redis.Redis
    provisioner: Provisioner  # deployments, their environments, the horse's runners
    secrets: dict[str, str]
    files: FileBridge
    wire: Wire  # the events' appends (``factory.store.wire``): connected in the horse that writes them
    worker_name: str = ""
    spare_workspace: Path | None = None  # a work horse's (see ``worker.workspace``)


@dataclass(frozen=True)
class RunReport:
    outcome: RunOutcome  # one the horse reports (``RunOutcome.reported``)
    error_code: str | None = None  # the code of the run's terminal ``error`` (or of the retry's cause)
    closed_as: JobStatus | None = None  # the status this run's own terminal event gave the job (None: not it)


class _Stop(Exception):
    """The job's log closed under the function (canceled, or a limit was hit)."""


@dataclass(frozen=True)
class _End:
    """How the function's run ended: the terminal event to write, and whether another attempt may follow."""

    event: bytes
    retryable: bool = False


def _terminal_for(raw: bytes) -> tuple[JobStatus, dict[str, bytes]]:
    """The status a terminal event gives its job, and the record fields it writes."""
    event = decode(raw)
    status = JobStatus(terminal_status(event))
    if event.type == "done":
        return status, terminal_fields(status, now_ms(), event.data, None)
    message = event.data if isinstance(event.data, str) else orjson.dumps(event.data).decode()
    error = ErrorInfo(code=event.error_code or "ERROR", message=message)
    return status, terminal_fields(status, now_ms(), None, error)


def _will_retry(end: _End, claim: executions.Claim) -> bool:
    return end.retryable and claim.attempt < claim.max_attempts


def _error(code: str, message: str) -> _End:
    return _End(error_event(code, message))


class InvocationRunner:
    def __init__(
        self,
        runtime: WorkerRuntime,
        request: InvocationRequest,
        claim: executions.Claim,
        deadlines: Deadlines,
        started: Callable[[], None],
    ) -> None:
        self.runtime = runtime
        self._started = started  # told once the job has begun (the runner has its order): its log line
        self.request = request
        self.claim = claim
        self.deadlines = deadlines
        self.workspace = Workspace(runtime.settings.state_dir, request.job_id)
        self._runner_idle = False
        self._publisher: EventPublisher | None = None

    @property
    def publisher(self) -> EventPublisher:
        """The job's publisher, made at first use: for a function's run, once its runner has its
        order, so making it runs beside the function's start instead of before it."""
        if self._publisher is None:
            settings = self.runtime.settings
            self._publisher = EventPublisher(
                self.runtime.wire,
                self.request.job_id,
                max_events=settings.max_events_per_job,
                retention_s=settings.retention_s,
                redis_outage_s=settings.redis_outage_s,
                token=self.claim.token,
            )
        return self._publisher

    def run(self) -> RunReport:
        """Run the job to its terminal event (or its retry); never raises for a failure of the prefab."""
        claim = self.claim
        try:
            end = self._run_function(claim)
        finally:
            # Removed before the terminal event, so a caller who sees the job end never finds it.
            self.workspace.remove(self.runtime.spare_workspace)
        publisher = self.publisher
        closed_as = None
        if end is not None and not publisher.ended.is_set():
            closed_as = self._finish(publisher, claim, end)
        code = decode(end.event).error_code if end is not None else None
        if isinstance(publisher.failure, PublisherUnavailable):
            return RunReport(self._end_unavailable(claim, publisher.last_seq), REDIS_UNAVAILABLE)
        if publisher.failure is not None:
            logger.error("job's events could not all be written: %s", publisher.failure)
            return RunReport(RunOutcome.EVENTS_UNWRITTEN, code)
        outcome = self._outcome_of(publisher.final, end is not None and _will_retry(end, claim))
        return RunReport(outcome, code, closed_as)

    @staticmethod
    def _outcome_of(final: AppendResult | None, retrying: bool) -> RunOutcome:
        if final is None:
            return RunOutcome.EVENTS_UNWRITTEN
        if retrying and final.outcome in (Outcome.APPENDED, Outcome.DUPLICATE):
            return RunOutcome.RETRY_WRITTEN
        return RunOutcome.of_append(final.outcome)

    def _finish(self, publisher: EventPublisher, claim: executions.Claim, end: _End) -> JobStatus | None:
        """Write the last event: the terminal one, or ``retry`` when another attempt follows; the
        status the job was closed with, when this terminal event closed it."""
        if not _will_retry(end, claim):
            status, fields = _terminal_for(end.event)
            final = publisher.finish(end.event, fields)
            return status if final is not None and final.outcome is Outcome.APPENDED else None
        error = decode(end.event)
        reason = error.data if isinstance(error.data, str) else orjson.dumps(error.data).decode()
        code = error.error_code or UNEXPECTED_ERROR
        event = retry_event(claim.attempt + 1, claim.max_attempts, code, reason)
        publisher.finish(event, retry_fields(claim.token, claim.attempt + 1), Mode.RETRY)
        logger.warning("attempt %d of %d failed (%s); retrying", claim.attempt, claim.max_attempts, code)
        return None

    def _end_unavailable(self, claim: executions.Claim, last_seq: int) -> RunOutcome:
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
            return RunOutcome.of_append(result.outcome)

    def _run_function(self, claim: executions.Claim) -> _End | None:
        """Everything between "started" and the terminal event; returns how it ended (None: the log closed)."""
        if self.request.kind == "deploy":
            return self._build(self.publisher)
        provisioner = self.runtime.provisioner
        try:
            deployment = provisioner.deployment(self.request.deployment_id)
        except ProvisionError as exc:
            return _error(UNEXPECTED_ERROR, f"prefab could not be loaded: {exc}")
        spec = deployment.manifest.function(self.request.function_name)
        if spec is None:
            return _error(UNEXPECTED_ERROR, f"{deployment.ref} has no function {self.request.function_name!r}")
        secrets, missing = self._secrets(spec)
        if missing:
            return _error(MISSING_SECRET, f"required secret(s) not configured: {', '.join(missing)}")
        try:
            runner = provisioner.runner(deployment)
        except (ProvisionError, RunnerFailed) as exc:
            return _error(UNEXPECTED_ERROR, f"prefab could not be loaded: {exc}")
        self.workspace.create(self.runtime.spare_workspace)
        try:
            self.runtime.files.fetch_inputs(self.request, self.workspace)
        except FileError as exc:
            return _error(exc.code, str(exc))
        provisioner.hand_over(self.workspace.path, self.workspace.inputs)
        terminal = self._iterate(deployment, runner, secrets)
        publisher = self.publisher
        if terminal is None or publisher.ended.is_set():
            return None
        if not _will_retry(terminal, claim):  # a failed attempt that runs again keeps no outputs
            try:
                files_event = self.runtime.files.store_outputs(self.request, self.workspace, claim.token)
            except FileError as exc:
                return _error(exc.code, str(exc))
            if files_event is not None:
                publisher.publish(files_event)
        return terminal

    def _build(self, publisher: EventPublisher) -> _End:
        """The job of a deployment: build it, record its outcome, end with it."""
        self._started()
        provisioner = self.runtime.provisioner
        provisioner.forget(self.request.deployment_id)  # read its record afresh
        try:
            deployment = provisioner.deployment(self.request.deployment_id)
        except ProvisionError as exc:
            return _error(DEPLOYMENT_FAILED, str(exc))
        builder.notify(self.runtime.settings, "deployment.started", deployment)
        reason: str | None = None
        try:
            result = builder.build(provisioner, deployment, lambda event: publisher.publish(orjson.dumps(event)))
        except builder.BuildFailed as exc:
            reason = str(exc)
            logger.error("deployment %s failed: %s", deployment.ref, reason)
        builder.record_outcome(self.runtime.redis, self.runtime.settings, deployment, reason)
        if reason is not None:
            return _error(DEPLOYMENT_FAILED, reason)
        logger.info("deployment %s ready", deployment.ref)
        return _End(orjson.dumps({"type": "done", "data": result}))

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

    def _iterate(self, deployment: Deployment, runner: Runner, secrets: dict[str, str]) -> _End | None:
        """Run the function in its runner under the deadline; how it ended, or None if the log closed."""
        provisioner = self.runtime.provisioner
        order = {
            "op": "run",
            "function": self.request.function_name,
            "inputs": self.request.inputs,
            "env": {**secrets, "HOME": str(self.workspace.path), "TMPDIR": str(self.workspace.path)},
            "cwd": str(self.workspace.path),
        }
        runner.job_fields = {**(current_job_fields.get() or {}), "job_id": self.request.job_id}
        self._runner_idle = False  # set once the runner reported the job's end: only then may it run another
        try:
            runner.send(order)
            self._started()
            return self._follow(runner, self.publisher)
        except RunnerGone as gone:
            return _End(error_event(WORKER_LOST, f"the prefab's process died ({gone.description})"), retryable=True)
        finally:  # its fields stay the runner's until the next job: output of this one may still arrive
            if not self._runner_idle:  # stopped mid-job (deadline, cancel, a bad event), or dead
                provisioner.discard(runner)

    def _follow(self, runner: Runner, publisher: EventPublisher) -> _End | None:
        """Publish what the runner sends until the function ends, its timeout passes or the log closes."""
        max_bytes = self.runtime.settings.max_event_bytes
        stop_at = self.deadlines.function_by(time.monotonic())
        while True:
            remaining_s = stop_at - time.monotonic()
            if remaining_s <= 0:
                return _error(TIMEOUT, f"the job exceeded its timeout of {self.deadlines.timeout_s:g} s")
            message = runner.recv(min(remaining_s, PUBLISHER_CHECK_S))
            if publisher.ended.is_set():
                return None
            if message is None:
                continue
            tag, body = message[:1], message[1:]
            if tag != b"E":
                return self._ended_by(runner, tag, body)
            accepted: list[bytes] = []  # published together: one hand-off per message, not per event
            for line in body.split(b"\n"):
                try:
                    event_type, raw = accept_encoded(line)
                    if len(raw) > max_bytes:
                        raise InvalidEvent(f"event of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
                except InvalidEvent as exc:
                    publisher.publish_many(accepted)
                    return _error(INVALID_EVENT, str(exc))
                if is_terminal(event_type):
                    publisher.publish_many(accepted)
                    self._drain(runner)
                    return _End(raw)
                accepted.append(raw)
            publisher.publish_many(accepted)

    def _drain(self, runner: Runner) -> None:
        """Read the runner's end of a job that yielded its terminal event (it closes the generator)."""
        self._runner_idle = runner.recv(DRAIN_S) is not None  # else its generator's cleanup hangs

    def _ended_by(self, runner: Runner, tag: bytes, body: bytes) -> _End:
        self._runner_idle = tag in (b"F", b"R", b"N", b"X")
        if tag == b"F":
            return _End(orjson.dumps({"type": "done", "data": None}))
        if tag == b"R":
            return _End(b'{"type":"done","data":' + body + b"}")
        if tag == b"N":
            return _error(INVALID_EVENT, body.decode(errors="replace"))
        if tag == b"M":
            return _error(RESOURCE_EXHAUSTED, body.decode(errors="replace"))
        if tag == b"X":
            report = orjson.loads(body)
            logger.error("prefab raised:\n%s", report.get("traceback", ""))
            return _End(error_event(UNEXPECTED_ERROR, f"{report['type']}: {report['message']}"), retryable=True)
        return _error(UNEXPECTED_ERROR, f"the prefab's process sent an unknown message {tag!r}")
