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

from gateway.deps import StateDep

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """A caller: the id its secrets, files and quotas are kept under (never its API key)."""

    id: str


def bearer_value(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <credentials>`` header."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


async def _caller(
    state: StateDep,
    x_internal_token: Annotated[str | None, Header(description="from /v1/auth/convert_to_internal_token")] = None,
    authorization: Annotated[str | None, Header(description="Bearer <API key>, instead of a token")] = None,
) -> Caller:
    # Plain headers rather than a security scheme: with auth off, these routes need no credentials.
    if state.auth is None:
        return Caller(ANONYMOUS)
    return Caller(state.auth.caller_of(bearer_value(authorization), x_internal_token))


CallerDep = Annotated[Caller, Depends(_caller)]
