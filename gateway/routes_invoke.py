"""Invoking: ``POST /invoke`` (202 + job id) and the seed's ``POST /invoke/{...}`` forms."""

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from factory.deployed import Target
from factory.jobs import InvocationRequest, JobStatus
from factory.sealing import seal_declared
from gateway.deps import GatewayState, StateDep
from gateway.schemas import CallBody, ErrorResponse, InvokeAccepted, InvokeBody, RuntimeResult, SeedInvokeBody
from gateway.streaming import RelayResponse, check_capacity, open_stream
from gateway.waiting import wait_for_end

router = APIRouter(
    tags=["invoke"],
    responses={
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        413: {"model": ErrorResponse},
        415: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)


async def prepare_call(
    state: GatewayState, prefab_id: str | None, function_name: str, body: CallBody
) -> tuple[Target, InvocationRequest]:
    """The call's target and its job's request, checked against the manifest; nothing is written yet."""
    return await state.jobs.prepare(
        prefab_id, function_name, body.call_inputs, body.files, version=body.version, retries=body.retries
    )


async def _enqueue(state: GatewayState, target: Target, request: InvocationRequest) -> None:
    await state.jobs.submit(target, request)
    state.metrics.jobs_submitted.labels(request.prefab_id, request.function_name).inc()


def _token(state: GatewayState, job_id: str) -> str | None:
    """The job's token when auth is on: it opens this job's status and events only."""
    return state.auth.signer.issue(job_id) if state.auth is not None else None


def _job_headers(state: GatewayState, job_id: str) -> dict[str, str]:
    token = _token(state, job_id)
    return {"X-Job-Id": job_id} if token is None else {"X-Job-Id": job_id, "X-Job-Token": token}


def _accepted(state: GatewayState, base_url: str, job_id: str) -> InvokeAccepted:
    # What ``url_for("get_job")`` and ``url_for("job_events")`` give, without walking the routes per call.
    status_url = f"{base_url.rstrip('/')}/jobs/{job_id}"
    return InvokeAccepted(
        job_id=job_id,
        status=JobStatus.QUEUED,
        events_url=f"{status_url}/events",
        status_url=status_url,
        token=_token(state, job_id),
    )


@router.post("/invoke", status_code=202, response_model=InvokeAccepted)
async def invoke(body: InvokeBody, http: Request, state: StateDep) -> Response:
    """Enqueue a call and answer at once with the job id and where to follow it."""
    target, request = await prepare_call(state, body.prefab_id, body.function_name, body)
    return await accept_call(state, str(http.base_url), target, request)


async def accept_call(state: GatewayState, base_url: str, target: Target, request: InvocationRequest) -> Response:
    """``POST /invoke`` once the call is prepared: enqueue it, 202 with the job id and where to follow it."""
    await _enqueue(state, target, request)
    accepted = _accepted(state, base_url, request.job_id)
    # Serialized here, once: a model returned to FastAPI is validated again against response_model.
    return Response(
        accepted.model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": accepted.status_url},
    )


async def prepare_seed_call(
    state: GatewayState, prefab_id: str | None, function_name: str, body: SeedInvokeBody
) -> tuple[Target, InvocationRequest]:
    """:func:`prepare_call`, its secrets sealed, and (streaming) room for its stream; nothing is written yet."""
    target, request = await prepare_call(state, prefab_id, function_name, body)
    if body.secrets:
        request.sealed_secrets = seal_declared(state.settings, target.function, body.secrets)
    if target.function.streaming:
        check_capacity(state, request.job_id)  # before the enqueue: a refused caller must not leave an orphan job
    return target, request


async def answer_seed_call(state: GatewayState, base_url: str, target: Target, request: InvocationRequest) -> Response:
    """The seed's forms once the call is prepared. Streaming: the new job's SSE stream. Non-streaming:
    the result once the job ends (202 and where to follow it, past ``sync_wait_s``)."""
    job_id = request.job_id
    await _enqueue(state, target, request)
    if target.function.streaming:
        # The stream replays the log first, so subscribing after the enqueue loses nothing.
        return await open_stream(state, job_id, 0, _job_headers(state, job_id), checked=True)
    record = await wait_for_end(state, job_id, state.settings.sync_wait_s)
    if record is None:
        accepted = _accepted(state, base_url, job_id)
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=_job_headers(state, job_id))
    result = RuntimeResult.from_record(record)
    return JSONResponse(result.model_dump(mode="json"), headers=_job_headers(state, job_id))


_SEED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": RuntimeResult, "content": {"text/event-stream": {}}},
    202: {"model": InvokeAccepted},
}


@router.post("/invoke/{function_name}", response_class=RelayResponse, responses=_SEED_RESPONSES)
async def invoke_function(function_name: str, body: SeedInvokeBody, http: Request, state: StateDep) -> Response:
    """The seed's form, with the prefab found by the (unique) function name."""
    target, request = await prepare_seed_call(state, None, function_name, body)
    return await answer_seed_call(state, str(http.base_url), target, request)


@router.post("/invoke/{prefab_id}/{function_name}", response_class=RelayResponse, responses=_SEED_RESPONSES)
async def invoke_prefab_function(
    prefab_id: str, function_name: str, body: SeedInvokeBody, http: Request, state: StateDep
) -> Response:
    """The seed's form with an explicit prefab."""
    target, request = await prepare_seed_call(state, prefab_id, function_name, body)
    return await answer_seed_call(state, str(http.base_url), target, request)
