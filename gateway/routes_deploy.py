"""Deployments over HTTP, as the ecosystem's release pipeline calls them.

``POST /v1/deploy`` (multipart: ``prefab_id``, ``version``, ``whl_file``) checks the signature
when ``FACTORY_DEPLOY_SECRET`` is set (``X-Hub-Signature-256``: 401 missing, 403 wrong, compared in
constant time), reads the wheel (422 when its manifest is not the one named, or its code does not
match its manifest as far as the source shows), keeps it in the factory's storage and records the
deployment; a worker builds it. ``GET /v1/deployments/{id}`` is its record and
``GET /v1/deployments/{id}/events`` the SSE stream of its steps (the build job's events);
``DELETE /v1/deployments/{id}`` retires it.
"""

import asyncio
import io
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.datastructures import UploadFile

from factory.deployments import Deployment, DeploymentSource, DeploymentState, deployment_id_for
from factory.errors import BadRequest, NotFound, PayloadTooLarge, PermissionDenied, Unauthenticated, ValidationFailed
from factory.jobs import now_ms
from factory.registry import deploy, undeploy
from factory.source_check import source_problems
from factory.wheels import WheelInfo, canonical_wheel_name, read_wheel, signature_matches
from gateway.deps import GatewayState, StateDep
from gateway.numbers import whole_number
from gateway.routes_jobs import job_events
from gateway.schemas import DeploymentList, DeploymentView
from gateway.v1.caller import CallerDep, bearer_value
from gateway.v1.schemas import ECOSYSTEM_ERRORS

router = APIRouter(tags=["deployments"], responses=ECOSYSTEM_ERRORS)  # under /v1: the ecosystem's error shape

FRAMING_BYTES = 64 * 1024
WHEELS_PREFIX = "deployments"


def _view(http: Request, deployment: Deployment) -> DeploymentView:
    url = str(http.url_for("deployment_events", deployment_id=deployment.deployment_id))
    return DeploymentView.from_deployment(deployment, url)


async def _form_fields(http: Request, state: GatewayState) -> tuple[str, str, bytes]:
    declared = whole_number(http.headers.get("content-length"))
    if declared is None:
        raise BadRequest("a deployment needs a Content-Length")
    if declared > state.settings.max_wheel_bytes + FRAMING_BYTES:
        raise PayloadTooLarge(f"the wheel is larger than {state.settings.max_wheel_bytes} bytes")
    try:
        form = await http.form(max_files=1, max_fields=8)
    except Exception as exc:  # Starlette raises its own parse errors
        raise BadRequest(f"the body is not valid multipart/form-data: {exc}") from exc
    prefab_id, version, wheel = form.get("prefab_id"), form.get("version"), form.get("whl_file")
    if not isinstance(prefab_id, str) or not isinstance(version, str) or not isinstance(wheel, UploadFile):
        raise ValidationFailed("a deployment needs the fields prefab_id and version and the file whl_file")
    data = await wheel.read()
    await form.close()
    return prefab_id, version, data


def _check_signature(state: GatewayState, signature: str | None, prefab_id: str, version: str, sha: str) -> None:
    secret = state.settings.deploy_secret
    assert secret is not None
    if not signature:
        raise Unauthenticated("X-Hub-Signature-256 is required to deploy")
    if not signature_matches(secret, signature, prefab_id, version, sha):
        raise PermissionDenied("X-Hub-Signature-256 does not match the deployment")


def _check_wheel(info: WheelInfo, prefab_id: str, version: str) -> None:
    manifest = info.manifest
    if (manifest.id, manifest.version) != (prefab_id, version):
        raise ValidationFailed(
            f"the wheel holds {manifest.id}@{manifest.version}, not {prefab_id}@{version}",
            details=[{"field": "prefab_id", "wheel": manifest.id}, {"field": "version", "wheel": manifest.version}],
        )
    problems = source_problems(manifest, info.main_source)
    if problems:
        raise ValidationFailed("the manifest does not match src/main.py: " + "; ".join(problems), details=problems)


@router.post(
    "/v1/deploy",
    status_code=202,
    response_model=DeploymentView,
)
async def deploy_wheel(
    http: Request,
    state: StateDep,
    x_hub_signature_256: Annotated[str | None, Header()] = None,
    x_internal_token: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> DeploymentView:
    """Deploy a prefab wheel (multipart ``prefab_id``, ``version``, ``whl_file``); a worker builds it.

    With ``FACTORY_DEPLOY_SECRET`` the signature is the credential (the release pipeline's);
    without it, a caller's API key or internal token when API keys are configured.
    """
    if state.settings.deploy_secret is None and state.auth is not None:
        state.auth.caller_of(bearer_value(authorization), x_internal_token)
    prefab_id, version, data = await _form_fields(http, state)
    info = read_wheel(data)
    if state.settings.deploy_secret is not None:
        _check_signature(state, x_hub_signature_256, prefab_id, version, info.sha256)
    _check_wheel(info, prefab_id, version)
    location = f"{WHEELS_PREFIX}/{info.sha256}/{canonical_wheel_name(prefab_id, version)}"
    await asyncio.to_thread(state.files.storage.put, location, io.BytesIO(data), "application/zip")
    now = now_ms()
    candidate = Deployment(
        deployment_id=deployment_id_for(prefab_id, version, info.sha256),
        prefab_id=prefab_id,
        version=version,
        state=DeploymentState.BUILDING,
        source=DeploymentSource.WHEEL,
        location=location,
        sha256=info.sha256,
        requirements=list(info.requires),
        manifest=info.manifest,
        created_ms=now,
        updated_ms=now,
    )
    deployment = await asyncio.to_thread(deploy, state.jobs.sync_client, state.settings, candidate)
    await state.catalog.refresh(force=True)
    return _view(http, deployment)


@router.get("/v1/deployments", response_model=DeploymentList)
async def list_deployments(
    http: Request, state: StateDep, caller: CallerDep, prefab_id: Annotated[str | None, Query(max_length=128)] = None
) -> DeploymentList:
    """Every deployment the factory keeps (retired ones until their retention ends), newest first."""
    await state.catalog.refresh()
    found = [d for d in state.catalog.deployments.values() if prefab_id is None or d.prefab_id == prefab_id]
    found.sort(key=lambda d: d.created_ms, reverse=True)
    return DeploymentList(deployments=[_view(http, d) for d in found])


async def _deployment(state: GatewayState, deployment_id: str) -> Deployment:
    found = state.catalog.deployments.get(deployment_id)
    if found is None:
        await state.catalog.refresh(force=True)
        found = state.catalog.deployments.get(deployment_id)
    if found is None:
        raise NotFound(f"no deployment {deployment_id!r}")
    return found


@router.get("/v1/deployments/{deployment_id}", response_model=DeploymentView)
async def get_deployment(deployment_id: str, http: Request, state: StateDep, caller: CallerDep) -> DeploymentView:
    """The deployment's record: ``building`` → ``ready`` | ``failed`` (with the reason), or ``retired``."""
    await state.catalog.refresh()
    return _view(http, await _deployment(state, deployment_id))


@router.get(
    "/v1/deployments/{deployment_id}/events",
    response_class=Response,
    responses={200: {"content": {"text/event-stream": {}}}, 204: {"description": "the build ended"}},
)
async def deployment_events(
    deployment_id: str,
    state: StateDep,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header()] = None,
    last_event_id_query: Annotated[int | None, Query(alias="last_event_id", ge=0)] = None,
) -> Response:
    """SSE: the deployment's steps (resolving, installing, importing, checking) to ``done`` or ``error``."""
    deployment = await _deployment(state, deployment_id)
    if deployment.job_id is None:
        raise NotFound(f"deployment {deployment_id!r} has no build to follow")
    return await job_events(deployment.job_id, state, last_event_id, last_event_id_query)


@router.delete("/v1/deployments/{deployment_id}", response_model=DeploymentView)
async def delete_deployment(deployment_id: str, http: Request, state: StateDep, caller: CallerDep) -> DeploymentView:
    """Retire the deployment: new calls no longer run on it; jobs already given it run to their end."""
    retired = await asyncio.to_thread(undeploy, state.jobs.sync_client, deployment_id)
    await state.catalog.refresh(force=True)
    return _view(http, retired)
