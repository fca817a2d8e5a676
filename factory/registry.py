"""Recording deployments: deploy (record + build job), undeploy, and prefab folders at start.

The writer's side of ``factory.deployments``; blocking (the gateway calls it in a thread, the
worker and the CLI directly). Deploying the same content twice is idempotent: the deployment id
is a hash of prefab id, version and content, and a deployment already ``ready`` or still being
built is returned as it is. A deployment replaces the live one of the same prefab version for
new calls (that one is retired); jobs already queued keep the deployment they were given.
"""

import hashlib
import logging
import tomllib
from pathlib import Path

import redis

from factory.catalog import Catalog, PrefabEntry
from factory.deployments import (
    Deployment,
    DeploymentSource,
    DeploymentState,
    deployment_id_for,
    encode,
    parse_catalog,
    superseded,
)
from factory.enqueue import enqueue
from factory.errors import NotFound
from factory.jobs import InvocationRequest, JobRecord, JobStatus, new_job_id, now_ms
from factory.manifest import Manifest
from factory.settings import Settings
from factory.store import keys
from factory.wheels import locked_requirements

logger = logging.getLogger(__name__)

# The function name of a deployment's build job: never a prefab's (those are Python identifiers).
BUILD_FUNCTION = "@build"


def read_all(client: redis.Redis) -> dict[str, Deployment]:
    raw: dict[bytes, bytes] = client.hgetall(keys.deployments_key())  # type: ignore[assignment]
    return parse_catalog(raw)


def _build_job_ended(client: redis.Redis, deployment: Deployment) -> bool:
    """Whether a ``building`` deployment's build job is over (it died with its worker, say)."""
    if deployment.job_id is None:
        return True
    status: bytes | None = client.hget(keys.job_key(deployment.job_id), "status")  # type: ignore[assignment]
    return status is None or JobStatus(status.decode().strip('"')).is_final


def deploy(client: redis.Redis, settings: Settings, candidate: Deployment) -> Deployment:
    """Record ``candidate`` as building and enqueue its build; the existing record if it needs none."""
    catalog = read_all(client)
    existing = catalog.get(candidate.deployment_id)
    if existing is not None and (
        existing.state is DeploymentState.READY
        or (existing.state is DeploymentState.BUILDING and not _build_job_ended(client, existing))
    ):
        return existing
    job_id = new_job_id()
    deployment = candidate.model_copy(
        update={"state": DeploymentState.BUILDING, "reason": None, "job_id": job_id, "updated_ms": now_ms()}
    )
    retired = [old.with_state(DeploymentState.RETIRED) for old in superseded(catalog, deployment)]
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.deployments_key(), deployment.deployment_id, encode(deployment))
        for old in retired:
            pipe.hset(keys.deployments_key(), old.deployment_id, encode(old))
        pipe.incr(keys.deployments_version_key())
        pipe.execute()
    request = InvocationRequest(
        job_id=job_id,
        prefab_id=deployment.prefab_id,
        function_name=BUILD_FUNCTION,
        version=deployment.version,
        deployment_id=deployment.deployment_id,
        kind="deploy",
        timeout_s=settings.deploy_timeout_s,
        created_ms=now_ms(),
    )
    record = JobRecord(
        job_id=job_id,
        prefab_id=deployment.prefab_id,
        function_name=BUILD_FUNCTION,
        version=deployment.version,
        status=JobStatus.QUEUED,
        created_ms=request.created_ms,
        streaming=True,
    )
    enqueue(client, settings, record, request)
    logger.info("deploying %s (deployment %s)", deployment.ref, deployment.deployment_id, extra={"job_id": job_id})
    return deployment


def undeploy(client: redis.Redis, deployment_id: str) -> Deployment:
    """Retire a deployment: no new call runs on it; jobs already given it run to their end."""
    raw: bytes | None = client.hget(keys.deployments_key(), deployment_id)  # type: ignore[assignment]
    if raw is None:
        raise NotFound(f"no deployment {deployment_id!r}")
    retired = Deployment.model_validate_json(raw).with_state(DeploymentState.RETIRED)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.deployments_key(), deployment_id, encode(retired))
        pipe.incr(keys.deployments_version_key())
        pipe.execute()
    logger.info("undeployed %s (deployment %s)", retired.ref, deployment_id)
    return retired


def prune_retired(client: redis.Redis, retention_s: int) -> int:
    """Forget deployments retired (or failed) longer than the retention ago; how many went."""
    cutoff_ms = now_ms() - retention_s * 1000
    gone = [
        d.deployment_id
        for d in read_all(client).values()
        if d.state in (DeploymentState.RETIRED, DeploymentState.FAILED) and d.updated_ms <= cutoff_ms
    ]
    if gone:
        client.hdel(keys.deployments_key(), *gone)
        client.incr(keys.deployments_version_key())
    return len(gone)


def folder_requirements(folder: Path) -> list[str]:
    """The runtime dependencies a prefab folder's ``pyproject.toml`` declares (none without one)."""
    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text()).get("project", {})
    except FileNotFoundError:
        return []
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{folder / 'pyproject.toml'}: {exc}") from exc
    return [str(dependency) for dependency in project.get("dependencies", [])]


def folder_deployment(folder: Path, manifest: Manifest, locked: str | None) -> Deployment:
    """A development deployment: the folder's code runs in place, in an environment of its dependencies."""
    requirements = folder_requirements(folder)
    location = str(folder.resolve())
    spec = "\n".join([location, *requirements, locked or ""])
    sha256 = hashlib.sha256(spec.encode()).hexdigest()
    now = now_ms()
    return Deployment(
        deployment_id=deployment_id_for(manifest.id, manifest.version, sha256),
        prefab_id=manifest.id,
        version=manifest.version,
        state=DeploymentState.BUILDING,
        source=DeploymentSource.FOLDER,
        location=location,
        sha256=sha256,
        requirements=requirements,
        locked=locked,
        manifest=manifest,
        created_ms=now,
        updated_ms=now,
    )


def register_folders(client: redis.Redis, settings: Settings) -> list[PrefabEntry]:
    """Deploy every prefab folder of the settings (development deployments); the folders found."""
    entries = Catalog.discover(settings.prefabs).entries
    for entry in entries:
        if not entry.ok or entry.manifest is None:
            continue
        try:
            candidate = folder_deployment(entry.path, entry.manifest, locked_requirements(entry.path))
        except ValueError as exc:
            logger.error("prefab folder %s cannot be deployed: %s", entry.path, exc)
            continue
        deploy(client, settings, candidate)
    return entries
