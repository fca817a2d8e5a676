"""Running the ecosystem's calls (``POST /v1/run``): validate all, then run them one after another.

Every call is validated (prefab, version, function, inputs, files) before any is enqueued, so a
404 or 422 runs nothing. One call of a streaming function answers with the job's SSE stream
itself; otherwise each call is enqueued in turn, waited for (up to ``sync_wait_s``) and reported
as ``SUCCESS`` with the runtime's output shape, or ``FAILED`` with the error.

Secrets: the caller's stored secrets for the prefab are sealed into each request, and reach the
function ahead of the worker's own. The gateway cannot see the worker's own secrets, so a
required secret the caller has not stored is not refused up front: the worker decides. When it
reports ``MISSING_SECRET`` (before the function starts, as the job's first event), a single call
answers the ecosystem's 400 ``MISSING_SECRET`` with the manifest's instructions; in a batch it is
that call's ``FAILED`` result.
"""

from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.responses import Response

from factory.deployed import Target
from factory.errors import MissingSecret
from factory.events import MISSING_SECRET
from factory.jobs import InvocationRequest, JobRecord, JobStatus
from factory.manifest import Secret
from factory.sealing import seal_declared
from gateway.deps import GatewayState
from gateway.streaming import check_capacity, open_stream
from gateway.v1.caller import Caller
from gateway.v1.deps import Ecosystem
from gateway.v1.schemas import CallError, CallResult, RunBody, RunResult, RuntimeOutput
from gateway.waiting import first_event, wait_for_end


@dataclass(frozen=True)
class _Prepared:
    target: Target
    request: InvocationRequest
    unsupplied: Secret | None  # a required secret the caller has not stored (the worker may have it)


async def _prepare(state: GatewayState, ecosystem: Ecosystem, caller: Caller, body: RunBody) -> list[_Prepared]:
    prepared: list[_Prepared] = []
    for call in body.calls:
        target, request = await state.jobs.prepare(
            call.prefab_id, call.function_name, call.inputs.parameters, call.inputs.files, version=call.version
        )
        values = await ecosystem.secrets.values(caller.id, target.manifest.id)
        request.sealed_secrets = seal_declared(state.settings, target.function, values)
        unsupplied = next((s for s in target.function.secrets if s.required and s.name not in values), None)
        prepared.append(_Prepared(target, request, unsupplied))
    return prepared


def _missing_secret(call: _Prepared) -> MissingSecret:
    secret = call.unsupplied or next(s for s in call.target.function.secrets if s.required)
    prefab_id = call.target.manifest.id
    return MissingSecret(
        f"missing required secret {secret.name!r} for prefab {prefab_id!r}: store it with POST /v1/secrets",
        {"prefab_id": prefab_id, "secret_name": secret.name, "instructions": secret.instructions or secret.description},
    )


def job_headers(state: GatewayState, job_id: str) -> dict[str, str]:
    if state.auth is None:
        return {"X-Job-Id": job_id}
    return {"X-Job-Id": job_id, "X-Job-Token": state.auth.signer.issue(job_id)}


async def _enqueue(state: GatewayState, ecosystem: Ecosystem, caller: Caller, call: _Prepared) -> None:
    request = call.request
    await ecosystem.quotas.start_job(caller.id, request.job_id, request.timeout_s)
    try:
        await state.jobs.submit(call.target, request)
    except BaseException:
        await ecosystem.quotas.end_job(caller.id, request.job_id)
        raise
    state.metrics.jobs_submitted.labels(request.prefab_id, request.function_name).inc()


async def _stream(state: GatewayState, ecosystem: Ecosystem, caller: Caller, call: _Prepared) -> Response:
    job_id = call.request.job_id
    check_capacity(state, job_id)  # before the enqueue: a refused caller must not leave an orphan job
    await _enqueue(state, ecosystem, caller, call)
    if call.unsupplied is not None:
        first = await first_event(state, job_id, state.settings.sync_wait_s)
        if first is not None and first.get("error_code") == MISSING_SECRET:
            raise _missing_secret(call)
    return await open_stream(state, job_id, 0, job_headers(state, job_id), checked=True)


def _result(record: JobRecord | None, job_id: str, wait_s: float) -> CallResult:
    if record is None:
        message = f"still running after {wait_s:g} s: follow GET /jobs/{job_id}"
        return CallResult(status="FAILED", error=CallError(message=message, type="STILL_RUNNING"), job_id=job_id)
    if record.status is JobStatus.FINISHED:
        output = RuntimeOutput(output=record.output, files=record.files or {})
        return CallResult(status="SUCCESS", output=output, job_id=job_id)
    error = record.error
    failure = CallError(message=error.message if error else "failed", type=error.code if error else "ERROR")
    return CallResult(status="FAILED", error=failure, job_id=job_id)


async def _run_one(
    state: GatewayState, ecosystem: Ecosystem, caller: Caller, call: _Prepared, alone: bool
) -> CallResult:
    job_id = call.request.job_id
    await _enqueue(state, ecosystem, caller, call)
    record = await wait_for_end(state, job_id, state.settings.sync_wait_s)
    if record is not None:
        await ecosystem.quotas.end_job(caller.id, job_id)
        if alone and record.error is not None and record.error.code == MISSING_SECRET:
            raise _missing_secret(call)
    return _result(record, job_id, state.settings.sync_wait_s)


async def run_calls(state: GatewayState, ecosystem: Ecosystem, caller: Caller, body: RunBody) -> Response:
    """The SSE stream of a single streaming call, else every call's result once each has ended."""
    prepared = await _prepare(state, ecosystem, caller, body)
    await ecosystem.quotas.take_calls(caller.id, len(prepared))
    if len(prepared) == 1 and prepared[0].target.function.streaming:
        return await _stream(state, ecosystem, caller, prepared[0])
    results = [await _run_one(state, ecosystem, caller, call, len(prepared) == 1) for call in prepared]
    first = results[0].job_id
    completed = all(r.status == "SUCCESS" for r in results)
    answer = RunResult(job_id=first, status="COMPLETED" if completed else "PARTIAL_SUCCESS", results=results)
    return JSONResponse(answer.model_dump(mode="json"), headers=job_headers(state, first))
