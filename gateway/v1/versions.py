"""Which prefab versions a call may name.

Until prefabs are deployed by version, a call's ``version`` must be the version of the loaded
prefab's manifest; anything else is the ecosystem's 404 (unknown version). This is the one place
to swap for the catalog of deployed versions.
"""

from factory.catalog import Target
from factory.errors import PrefabNotFound


def check_version(target: Target, version: str) -> None:
    """Return if ``version`` is served for the target's prefab; :class:`PrefabNotFound` otherwise."""
    if version != target.manifest.version:
        raise PrefabNotFound(
            f"prefab {target.manifest.id!r} has no version {version!r} (served: {target.manifest.version})"
        )
