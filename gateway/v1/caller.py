"""Who calls the ecosystem's routes: the dependency every ``/v1`` and ``/internal`` router carries.

With auth off (no ``FACTORY_API_KEYS``) every caller is the same :data:`ANONYMOUS` one, as in the
ecosystem's whitelist mode: no header is needed and any ``X-Internal-Token`` is ignored. With
auth on, an ``X-Internal-Token`` (from ``POST /v1/auth/convert_to_internal_token``) or an API key
as ``Authorization: Bearer`` names the caller; anything else is a 401. The app-wide check of
``gateway.auth`` leaves these prefixes to this dependency.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.deps import StateDep

ANONYMOUS = "anonymous"

_bearer = HTTPBearer(auto_error=False, description="an API key")


@dataclass(frozen=True)
class Caller:
    """A caller: the id its secrets, files and quotas are kept under (never its API key)."""

    id: str


async def _caller(
    state: StateDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_internal_token: Annotated[str | None, Header(description="from /v1/auth/convert_to_internal_token")] = None,
) -> Caller:
    if state.auth is None:
        return Caller(ANONYMOUS)
    api_key = bearer.credentials if bearer is not None else None
    return Caller(state.auth.caller_of(api_key, x_internal_token))


CallerDep = Annotated[Caller, Depends(_caller)]
