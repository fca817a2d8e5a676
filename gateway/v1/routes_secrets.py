"""``/v1/secrets``: each caller's secrets per prefab (``gateway.v1.secret_store``); names are listed, values never."""

from fastapi import APIRouter, Response

from factory.errors import NotFound
from gateway.v1.caller import CallerDep
from gateway.v1.deps import EcosystemDep
from gateway.v1.schemas import ECOSYSTEM_ERRORS, SecretBody, SecretNames

router = APIRouter(tags=["ecosystem"], responses=ECOSYSTEM_ERRORS)


@router.post("/v1/secrets", status_code=204, response_class=Response)
async def store_secret(body: SecretBody, ecosystem: EcosystemDep, caller: CallerDep) -> Response:
    """Store (or replace) one secret, used for this caller's calls of the prefab."""
    await ecosystem.secrets.put(caller.id, body.prefab_id, body.secret_name, body.secret_value)
    return Response(status_code=204)


@router.get("/v1/secrets/{prefab_id}", response_model=SecretNames)
async def list_secrets(prefab_id: str, ecosystem: EcosystemDep, caller: CallerDep) -> SecretNames:
    """The names of the secrets this caller stored for the prefab."""
    return SecretNames(prefab_id=prefab_id, secret_names=await ecosystem.secrets.names(caller.id, prefab_id))


@router.delete("/v1/secrets/{prefab_id}/{secret_name}", status_code=204, response_class=Response)
async def delete_secret(prefab_id: str, secret_name: str, ecosystem: EcosystemDep, caller: CallerDep) -> Response:
    """Forget one secret; 404 if this caller had none by that name."""
    if not await ecosystem.secrets.delete(caller.id, prefab_id, secret_name):
        raise NotFound(f"no secret {secret_name!r} stored for prefab {prefab_id!r}")
    return Response(status_code=204)
