"""The queues a worker takes jobs from: the deployments' queue, then one queue per prefab it serves.

A worker serves every deployed prefab, or only those named by ``FACTORY_SERVE_PREFABS``
(``factory worker --prefabs a,b``: dedicated workers). The set follows the catalog of
deployments: :meth:`ServedQueues.refresh` reloads it when the catalog's version changed, so a
prefab deployed after the worker started is served without a restart. Builds come first (a
deployment waits for nothing else); the prefabs' queues are tried in turn, starting one further
each take, so a busy prefab cannot starve the others.
"""

import redis

from factory.deployments import DeploymentState, parse_catalog
from factory.settings import Settings
from factory.store import keys


class ServedQueues:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.only = frozenset(settings.serve_prefabs)
        self.prefab_ids: list[str] = []
        self.secret_names: set[str] = set()  # the secrets the served prefabs declare
        self.versions: list[str] = []  # ``prefab@version`` of every live deployment it can run
        self._version: bytes | None = b""
        self._turn = 0
        self._deploy = keys.deploy_queue_name(settings.queue_name)

    def refresh(self) -> bool:
        """Follow the catalog (one GET when it did not change); whether the served prefabs changed."""
        version: bytes | None = self.client.get(keys.deployments_version_key())  # type: ignore[assignment]
        if version == self._version:
            return False
        raw: dict[bytes, bytes] = self.client.hgetall(keys.deployments_key())  # type: ignore[assignment]
        deployments = [d for d in parse_catalog(raw).values() if d.state is not DeploymentState.RETIRED]
        live = {d.prefab_id for d in deployments}
        served = sorted(live & self.only if self.only else live)
        self.secret_names = {
            secret.name
            for d in deployments
            if d.prefab_id in served
            for spec in d.manifest.functions
            for secret in spec.secrets
        }
        self.versions = sorted(d.ref for d in deployments if d.prefab_id in served)
        self._version = version
        changed = served != self.prefab_ids
        self.prefab_ids = served
        return changed

    def names(self) -> list[str]:
        """Every queue served, builds first."""
        return [self._deploy, *(keys.prefab_queue_name(self.settings.queue_name, p) for p in self.prefab_ids)]

    def keys_in_turn(self) -> list[str]:
        """The queues' keys in the order of this take: builds, then the prefabs from this turn's one on."""
        prefab_queues = self.names()[1:]
        if prefab_queues:
            self._turn = (self._turn + 1) % len(prefab_queues)
            prefab_queues = prefab_queues[self._turn :] + prefab_queues[: self._turn]
        return [keys.rq_queue_key(self._deploy), *(keys.rq_queue_key(name) for name in prefab_queues)]
