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


async def _prepare(
    state: GatewayState, prefab_id: str | None, function_name: str, body: CallBody
) -> tuple[Target, InvocationRequest]:
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


def _accepted(state: GatewayState, http: Request, job_id: str) -> InvokeAccepted:
    # What ``url_for("get_job")`` and ``url_for("job_events")`` give, without walking the routes per call.
    status_url = f"{str(http.base_url).rstrip('/')}/jobs/{job_id}"
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
    target, request = await _prepare(state, body.prefab_id, body.function_name, body)
    await _enqueue(state, target, request)
    accepted = _accepted(state, http, request.job_id)
    # Serialized here, once: a model returned to FastAPI is validated again against response_model.
    return Response(
        accepted.model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": accepted.status_url},
    )


async def _seed_invoke(
    state: GatewayState, http: Request, prefab_id: str | None, function_name: str, body: SeedInvokeBody
) -> Response:
    """Streaming: the new job's SSE stream. Non-streaming: the result once the job ends."""
    target, request = await _prepare(state, prefab_id, function_name, body)
    if body.secrets:
        request.sealed_secrets = seal_declared(state.settings, target.function, body.secrets)
    job_id = request.job_id
    if target.function.streaming:
        check_capacity(state, job_id)  # before the enqueue: a refused caller must not leave an orphan job
        # The stream replays the log first, so subscribing after the enqueue loses nothing.
        await _enqueue(state, target, request)
        return await open_stream(state, job_id, 0, _job_headers(state, job_id), checked=True)
    await _enqueue(state, target, request)
    record = await wait_for_end(state, job_id, state.settings.sync_wait_s)
    if record is None:
        accepted = _accepted(state, http, job_id)
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
    return await _seed_invoke(state, http, None, function_name, body)


@router.post("/invoke/{prefab_id}/{function_name}", response_class=RelayResponse, responses=_SEED_RESPONSES)
async def invoke_prefab_function(
    prefab_id: str, function_name: str, body: SeedInvokeBody, http: Request, state: StateDep
) -> Response:
    """The seed's form with an explicit prefab."""
    return await _seed_invoke(state, http, prefab_id, function_name, body)
