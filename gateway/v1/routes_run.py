"""``POST /v1/run`` and ``POST /v1/internal/run``: the ecosystem's run endpoint (``gateway.v1.runs``)."""

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from gateway.deps import StateDep
from gateway.v1.caller import CallerDep
from gateway.v1.deps import EcosystemDep
from gateway.v1.runs import run_calls
from gateway.v1.schemas import ECOSYSTEM_ERRORS, RunBody, RunResult

router = APIRouter(tags=["ecosystem"], responses=ECOSYSTEM_ERRORS)

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": RunResult, "content": {"text/event-stream": {}}},
}


@router.post("/v1/run", response_class=Response, responses=_RESPONSES)
async def run(body: RunBody, state: StateDep, ecosystem: EcosystemDep, caller: CallerDep) -> Response:
    """Run the calls one after another; one call of a streaming function answers with its SSE stream."""
    return await run_calls(state, ecosystem, caller, body)


@router.post("/v1/internal/run", response_class=Response, responses=_RESPONSES)
async def internal_run(body: RunBody, state: StateDep, ecosystem: EcosystemDep, caller: CallerDep) -> Response:
    """The same as ``/v1/run``, where the ecosystem's client sends it."""
    return await run_calls(state, ecosystem, caller, body)
