"""The catalog of deployed prefab versions, as the gateway routes calls and lists prefabs.

Built from the deployments hash (``factory.deployments``); immutable: a reader that sees the
catalog change builds a new one. A call names a prefab (or only a function whose name is
unique), and maybe a version; without one it runs the newest ``ready`` version.

- unknown prefab, version or function → :class:`PrefabNotFound` (404);
- a version that is ``failed`` → :class:`PrefabUnavailable` (503) with the reason, instead of a
  job that would fail; a version still ``building`` takes calls, which wait in the queue until a
  worker has built it (a call without a version prefers the newest ``ready`` one).
"""

from collections import defaultdict
from dataclasses import dataclass, field

from factory.deployments import Deployment, DeploymentState, version_order
from factory.errors import PrefabNotFound, PrefabUnavailable
from factory.manifest import FunctionSpec, Manifest


@dataclass(frozen=True)
class Target:
    """A resolved call: the deployment it runs on, its manifest and the function's spec."""

    deployment: Deployment
    function: FunctionSpec

    @property
    def manifest(self) -> Manifest:
        return self.deployment.manifest


def _newest_first(deployments: list[Deployment]) -> list[Deployment]:
    return sorted(deployments, key=lambda d: version_order(d.version), reverse=True)


@dataclass(frozen=True)
class DeployedCatalog:
    """Every live (not retired) deployment, grouped by prefab, newest version first."""

    by_prefab: dict[str, list[Deployment]] = field(default_factory=dict)

    @classmethod
    def build(cls, deployments: dict[str, Deployment]) -> "DeployedCatalog":
        grouped: dict[str, list[Deployment]] = defaultdict(list)
        for deployment in deployments.values():
            if deployment.state is not DeploymentState.RETIRED:
                grouped[deployment.prefab_id].append(deployment)
        return cls({prefab_id: _newest_first(found) for prefab_id, found in sorted(grouped.items())})

    def versions(self, prefab_id: str) -> list[Deployment]:
        """The prefab's live deployments, newest version first; :class:`PrefabNotFound` if none."""
        found = self.by_prefab.get(prefab_id)
        if not found:
            raise PrefabNotFound(f"no deployed prefab {prefab_id!r}")
        return found

    def newest_ready(self, prefab_id: str) -> Deployment | None:
        return next((d for d in self.versions(prefab_id) if d.state is DeploymentState.READY), None)

    def deployment(self, prefab_id: str, version: str | None) -> Deployment:
        """The deployment a call runs on: the named version, else the newest ready one, else the newest
        one still building (the call waits in the queue while a worker builds it)."""
        versions = self.versions(prefab_id)
        if version is None:
            chosen = self.newest_ready(prefab_id) or next(
                (d for d in versions if d.state is DeploymentState.BUILDING), versions[0]
            )
        else:
            found = next((d for d in versions if d.version == version), None)
            if found is None:
                known = ", ".join(d.version for d in versions)
                raise PrefabNotFound(f"prefab {prefab_id!r} has no version {version!r} (deployed: {known})")
            chosen = found
        if chosen.state is DeploymentState.FAILED:
            raise PrefabUnavailable(
                f"{chosen.ref} failed to deploy: {chosen.reason}",
                details={"prefab_id": chosen.prefab_id, "version": chosen.version, "state": chosen.state},
            )
        return chosen

    def resolve(self, prefab_id: str | None, function_name: str, version: str | None = None) -> Target:
        """Find the function; ``prefab_id`` may be omitted when one prefab alone declares it."""
        if prefab_id is None:
            prefab_id = self._only_prefab_with(function_name)
        deployment = self.deployment(prefab_id, version)
        spec = deployment.manifest.function(function_name)
        if spec is None:
            raise PrefabNotFound(f"prefab {prefab_id!r} {deployment.version} has no function {function_name!r}")
        return Target(deployment, spec)

    def _only_prefab_with(self, function_name: str) -> str:
        owners = [
            prefab_id
            for prefab_id, versions in self.by_prefab.items()
            if any(d.manifest.function(function_name) is not None for d in versions)
        ]
        if not owners:
            raise PrefabNotFound(f"no deployed prefab has a function {function_name!r}")
        if len(owners) > 1:
            raise PrefabNotFound(
                f"function {function_name!r} is served by several prefabs ({', '.join(owners)}): name prefab_id"
            )
        return owners[0]
