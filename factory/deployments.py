"""Deployments: every prefab version the factory serves, recorded in Redis for every process.

A deployment is one prefab version made runnable: a wheel kept in the factory's storage (or, in
development, a folder whose code runs in place) plus the environment a worker builds for it. Its
record lives in one Redis hash (``keys.deployments_key``: deployment id → JSON), the catalog every
gateway and worker reads; a counter (``keys.deployments_version_key``) is bumped with every
change, so a reader reloads the hash only when it changed. Records are small and few (one per
version), so the whole catalog is read at once.

States: ``building`` (recorded, its environment and import check not done yet) → ``ready`` or
``failed`` (with the reason, verbatim); ``retired`` once undeployed (kept until the retention
ends, so a job already queued on it still runs to its end). A deployment of a prefab id and
version that already has one replaces it for new calls: the older record is retired.

Invariant: at most one deployment per (prefab id, version) is not ``retired``.
"""

import hashlib
from enum import StrEnum
from typing import Any

import orjson
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, Field

from factory.jobs import now_ms
from factory.manifest import Manifest


class DeploymentState(StrEnum):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    RETIRED = "retired"


class DeploymentSource(StrEnum):
    WHEEL = "wheel"  # a wheel in the factory's storage (``location`` is its storage key)
    FOLDER = "folder"  # a prefab folder run in place (``location`` is its path); development


class Deployment(BaseModel):
    """One deployed prefab version, as stored in the catalog."""

    deployment_id: str
    prefab_id: str
    version: str
    state: DeploymentState
    source: DeploymentSource
    location: str
    sha256: str = Field(description="of the wheel; of the dependency list for a folder")
    requirements: list[str] = Field(default_factory=list, description="what its environment installs")
    locked: str | None = Field(default=None, description="pinned requirements from the folder's uv.lock")
    manifest: Manifest
    created_ms: int
    updated_ms: int
    reason: str | None = None
    job_id: str | None = Field(default=None, description="the build job, whose events are the deployment's steps")

    @property
    def ref(self) -> str:
        return f"{self.prefab_id}@{self.version}"

    def environment_spec(self) -> bytes:
        """What decides the content of its environment (two deployments with the same spec share one)."""
        return orjson.dumps([self.source, self.sha256, self.requirements, self.locked], option=orjson.OPT_SORT_KEYS)

    def with_state(self, state: DeploymentState, reason: str | None = None) -> "Deployment":
        return self.model_copy(update={"state": state, "reason": reason, "updated_ms": now_ms()})


def deployment_id_for(prefab_id: str, version: str, sha256: str) -> str:
    """Deterministic id: deploying the same content twice is the same deployment."""
    digest = hashlib.sha256(f"{prefab_id}\0{version}\0{sha256}".encode()).hexdigest()
    return digest[:32]


def version_order(version: str) -> tuple[int, Version | str]:
    """Sort key: PEP 440 versions in their order, anything else after them by text."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def parse_catalog(raw: dict[Any, Any]) -> dict[str, Deployment]:
    """The catalog hash (HGETALL) as records; an unreadable entry is skipped, never fatal."""
    found: dict[str, Deployment] = {}
    for key, value in raw.items():
        try:
            deployment = Deployment.model_validate_json(value)
        except ValueError:
            continue
        found[key.decode() if isinstance(key, bytes) else str(key)] = deployment
    return found


def encode(deployment: Deployment) -> bytes:
    return deployment.model_dump_json(by_alias=True).encode()


def superseded(catalog: dict[str, Deployment], new: Deployment) -> list[Deployment]:
    """The live deployments of the same prefab version that ``new`` replaces."""
    return [
        d
        for d in catalog.values()
        if d.prefab_id == new.prefab_id
        and d.version == new.version
        and d.deployment_id != new.deployment_id
        and d.state is not DeploymentState.RETIRED
    ]
