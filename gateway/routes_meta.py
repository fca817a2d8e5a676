"""The catalog and the process: ``/prefabs``, ``/healthz``, ``/readyz``, ``/metrics``, ``/stats``."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from factory.catalog import PrefabEntry
from factory.errors import ServiceUnavailable
from factory.manifest import Manifest
from gateway.deps import GatewayState, StateDep
from gateway.schemas import ErrorResponse, Health, PrefabList, PrefabSummary
from gateway.stats import Snapshot, Stats, read_snapshot, summarise

router = APIRouter()


def _summary(entry: PrefabEntry) -> PrefabSummary:
    manifest = entry.manifest
    return PrefabSummary(
        id=manifest.id if manifest else None,
        path=str(entry.path),
        status="loaded" if entry.ok else "broken",
        version=manifest.version if manifest else None,
        name=manifest.name if manifest else None,
        description=manifest.description if manifest else None,
        functions=[f.name for f in manifest.functions] if manifest else [],
        problems=list(entry.problems),
    )


@router.get("/prefabs", response_model=PrefabList, tags=["prefabs"])
async def list_prefabs(state: StateDep) -> PrefabList:
    """Every prefab found, loaded or broken (with the reasons)."""
    return PrefabList(prefabs=[_summary(e) for e in state.catalog.entries])


@router.get(
    "/prefabs/{prefab_id}",
    tags=["prefabs"],
    response_model=Manifest,
    response_model_exclude_none=True,
    responses={404: {"model": ErrorResponse}},
)
async def get_prefab(prefab_id: str, state: StateDep) -> Manifest:
    """The loaded prefab's whole manifest: its functions with their parameters, secrets and file groups."""
    manifest = state.catalog.get(prefab_id).manifest
    assert manifest is not None
    return manifest


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


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
