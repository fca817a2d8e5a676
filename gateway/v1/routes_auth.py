"""``POST /v1/auth/convert_to_internal_token``: an API key (``Authorization: Bearer``) for an internal token."""

from typing import Annotated

from fastapi import APIRouter, Header

from factory.errors import Unauthenticated
from gateway.deps import StateDep
from gateway.v1.caller import ANONYMOUS, bearer_value
from gateway.v1.schemas import ECOSYSTEM_ERRORS, InternalToken

router = APIRouter(tags=["ecosystem"], responses=ECOSYSTEM_ERRORS)


@router.post("/v1/auth/convert_to_internal_token", response_model=InternalToken)
async def convert_to_internal_token(
    state: StateDep, authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None
) -> InternalToken:
    """A signed, expiring token for ``X-Internal-Token``, accepted by every gateway; 401 for a wrong key.

    With auth off any key is accepted and the token stands for the one anonymous caller.
    """
    if state.auth is None:
        return InternalToken(internal_token=ANONYMOUS)
    api_key = bearer_value(authorization)
    if api_key is None:
        raise Unauthenticated("send the API key as Authorization: Bearer <key>")
    return InternalToken(internal_token=state.auth.issue_internal(api_key))
