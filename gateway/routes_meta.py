"""The catalog and the process: ``/prefabs``, ``/healthz``, ``/readyz``, ``/metrics``, ``/stats``."""

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from factory.catalog import PrefabEntry
from factory.deployed import DeployedCatalog
from factory.deployments import Deployment, DeploymentSource, DeploymentState
from factory.errors import PrefabNotFound, ServiceUnavailable
from factory.isolation import Isolation, Level
from factory.manifest import Manifest
from gateway.deps import GatewayState, StateDep
from gateway.schemas import ErrorResponse, Health, PrefabList, PrefabSummary, VersionView
from gateway.stats import Snapshot, Stats, read_snapshot, summarise

router = APIRouter()


_STATUS: dict[DeploymentState, Literal["ready", "building", "failed"]] = {
    DeploymentState.READY: "ready",
    DeploymentState.BUILDING: "building",
    DeploymentState.FAILED: "failed",
}


def _version(deployment: Deployment) -> VersionView:
    return VersionView(
        version=deployment.version,
        state=deployment.state,
        reason=deployment.reason,
        deployment_id=deployment.deployment_id,
        source=deployment.source,
        deployed_at=datetime.fromtimestamp(deployment.created_ms / 1000, tz=UTC),
        functions=[f.name for f in deployment.manifest.functions],
    )


def _summary(catalog: DeployedCatalog, prefab_id: str) -> PrefabSummary:
    versions = catalog.versions(prefab_id)
    default = catalog.newest_ready(prefab_id) or versions[0]
    manifest = default.manifest
    return PrefabSummary(
        id=prefab_id,
        status=_STATUS[default.state],
        version=default.version,
        name=manifest.name,
        description=manifest.description,
        functions=[f.name for f in manifest.functions],
        versions=[_version(d) for d in versions],
        path=default.location if default.source is DeploymentSource.FOLDER else None,
        problems=[default.reason] if default.reason else [],
    )


def _broken(entry: PrefabEntry) -> PrefabSummary:
    manifest = entry.manifest
    return PrefabSummary(
        id=manifest.id if manifest else None,
        status="broken",
        version=manifest.version if manifest else None,
        name=manifest.name if manifest else None,
        path=str(entry.path),
        problems=list(entry.problems),
    )


@router.get("/prefabs", response_model=PrefabList, tags=["prefabs"])
async def list_prefabs(state: StateDep) -> PrefabList:
    """Every deployed prefab with its versions and their states, and the configured folders that are broken."""
    catalog = state.catalog.current
    summaries = [_summary(catalog, prefab_id) for prefab_id in catalog.by_prefab]
    return PrefabList(prefabs=summaries + [_broken(e) for e in state.broken_folders])


@router.get(
    "/prefabs/{prefab_id}",
    tags=["prefabs"],
    response_model=Manifest,
    response_model_exclude_none=True,
    responses={404: {"model": ErrorResponse}},
)
async def get_prefab(prefab_id: str, state: StateDep, version: str | None = None) -> Manifest:
    """The manifest of a version of the prefab (default: the one a call without a version runs): its
    functions with their parameters, secrets and file groups."""
    catalog = state.catalog.current
    versions = catalog.versions(prefab_id)
    if version is None:
        return (catalog.newest_ready(prefab_id) or versions[0]).manifest
    found = [d for d in versions if d.version == version]
    if not found:
        raise PrefabNotFound(f"prefab {prefab_id!r} has no version {version!r}")
    return found[0].manifest


class WorkerIsolation(BaseModel):
    worker: str
    isolation: Isolation | None = Field(default=None, description="absent: an older worker")


class HealthDetails(Health):
    isolation: Level | None = Field(
        default=None, description="the weakest isolation of prefab runners among the live workers (docs/security.md)"
    )
    workers: list[WorkerIsolation] = Field(default_factory=list)


_STRENGTH: dict[Level, int] = {"off": 0, "minimal": 1, "partial": 2, "full": 3}


@router.get("/healthz", response_model=HealthDetails, response_model_exclude_none=True, tags=["health"])
async def healthz(state: StateDep) -> HealthDetails:
    """The process is alive; with the isolation of prefab code each live worker reports (when Redis answers)."""
    try:
        workers = await state.catalog.workers()
    except (RedisError, OSError):
        return HealthDetails(status="ok")
    levels: list[Level] = [w.isolation.level for w in workers if w.isolation is not None]
    weakest = sorted(levels, key=_STRENGTH.__getitem__)[0] if levels else None
    return HealthDetails(
        status="ok",
        isolation=weakest,
        workers=[WorkerIsolation(worker=w.name, isolation=w.isolation) for w in workers],
    )


@router.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": ErrorResponse}})
async def readyz(state: StateDep) -> Health:
    """Redis answers, so calls can be accepted."""
    try:
        await state.redis.ping()
    except (RedisError, OSError) as exc:
        state.metrics.redis_errors.labels(where="readyz").inc()
        raise ServiceUnavailable("Redis is unreachable", retry_after_s=2) from exc
    return Health(status="ready")


async def _snapshot(state: GatewayState) -> Snapshot | None:
    try:
        return await read_snapshot(state.redis, state.settings)
    except (RedisError, OSError):
        state.metrics.redis_errors.labels(where="stats").inc()
        return None


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: this gateway process's, then the factory-wide ones read from Redis."""
    return Response(state.metrics.render(await _snapshot(state)), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats", response_model=Stats, tags=["health"], responses={503: {"model": ErrorResponse}})
async def stats(state: StateDep) -> Stats:
    """What the factory has done and is doing, across every process (JSON; the console's overview)."""
    snapshot = await _snapshot(state)
    if snapshot is None:
        raise ServiceUnavailable("Redis is unreachable", retry_after_s=2)
    return summarise(snapshot, state.hub.stream_count)
