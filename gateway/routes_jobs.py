"""Reading jobs: ``GET /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/events``, cancel."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from factory.errors import BadRequest
from factory.jobs import JobStatus
from gateway.deps import GatewayState, StateDep
from gateway.jobs import JobFilter
from gateway.numbers import whole_number
from gateway.relay import FIRST_PAGE
from gateway.schemas import ErrorResponse, JobList, JobView
from gateway.streaming import RelayResponse, open_stream

router = APIRouter(tags=["jobs"], responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    status: JobStatus | None = None,
    prefab_id: Annotated[str | None, Query(max_length=128)] = None,
    function_name: Annotated[str | None, Query(max_length=128)] = None,
) -> JobList:
    """The most recent jobs, newest first; only those of the given status, prefab and function when given."""
    match = JobFilter(status, prefab_id, function_name)
    return JobList(jobs=[JobView.from_record(r, n) for r, n in await state.jobs.recent(limit, match)])


@router.get("/jobs/{job_id}", response_model=JobView)
async def get_job(job_id: str, state: StateDep) -> JobView:
    record, last_event_id = await state.jobs.get(job_id)
    return JobView.from_record(record, last_event_id)


# The query form has the header's bound (gateway.numbers: at most 18 digits, for Redis' list indexes).
MAX_SEQ = 10**18 - 1


def last_seq_of(header: str | None, query: int | None) -> int:
    """The seq a reader resumes after: its ``Last-Event-ID`` header, else the query's, else 0."""
    if header is None:
        return query or 0
    value = whole_number(header.strip())
    if value is None:
        raise BadRequest("Last-Event-ID must be a non-negative integer (the seq of the last event seen)")
    return value


@router.get(
    "/jobs/{job_id}/events",
    response_class=RelayResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "the job already ended"},
        400: {"model": ErrorResponse, "description": "Last-Event-ID is not a seq, or is past the job's last event"},
    },
)
async def job_events(
    job_id: str,
    state: StateDep,
    last_event_id: Annotated[str | None, Header()] = None,
    last_event_id_query: Annotated[int | None, Query(alias="last_event_id", ge=0, le=MAX_SEQ)] = None,
) -> Response:
    """SSE: the log after ``Last-Event-ID`` (or from the start), then live, to the terminal event."""
    return await events_response(state, job_id, last_seq_of(last_event_id, last_event_id_query))


async def events_response(state: GatewayState, job_id: str, last_seq: int) -> Response:
    """``GET /jobs/{id}/events`` from ``last_seq``: the stream, or 204 when the job ended there."""
    # The log's first page comes with the record: a job's events already written cost one round trip.
    status, length, read_ahead = await state.jobs.stream_head(job_id, last_seq, FIRST_PAGE)
    if last_seq > length:
        raise BadRequest(f"Last-Event-ID {last_seq} is beyond the job's last event ({length})")
    if status.is_final and last_seq >= length:
        return Response(status_code=204)
    return await open_stream(state, job_id, last_seq, {"X-Job-Id": job_id}, read_ahead=read_ahead)


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
async def cancel_job(job_id: str, state: StateDep) -> JobView:
    """Cancel: a queued job never starts; a running one stops within a second."""
    record = await state.jobs.cancel(job_id)
    state.metrics.cancels.inc()
    _, length = await state.jobs.get(job_id)
    return JobView.from_record(record, length)
