"""The catalog: every prefab found in the configured folders, loaded or broken.

Both the gateway (to validate calls) and the worker (to import and run) start from it, so a
caller can only ever name a function that a loaded manifest declares.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from factory.errors import ManifestError, PrefabNotFound
from factory.manifest import SOURCE_PATH, FunctionSpec, Manifest, find_prefab_dirs, load_manifest
from factory.source_check import manifest_problems

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefabEntry:
    """One prefab folder: its manifest when it loads, else the reasons it does not."""

    path: Path
    manifest: Manifest | None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems

    @property
    def source_path(self) -> Path:
        return self.path / SOURCE_PATH


@dataclass(frozen=True)
class Target:
    """A resolved call target: the prefab and the function spec."""

    prefab: PrefabEntry
    manifest: Manifest
    function: FunctionSpec


@dataclass
class Catalog:
    entries: list[PrefabEntry] = field(default_factory=list)

    @classmethod
    def discover(cls, roots: list[Path]) -> "Catalog":
        """Load every prefab under ``roots``; a broken one is logged and kept as broken."""
        entries: list[PrefabEntry] = []
        seen: dict[str, Path] = {}
        for path in find_prefab_dirs(roots):
            entry = _load_entry(path)
            if entry.manifest is not None and entry.manifest.id in seen:
                duplicate = f"prefab id {entry.manifest.id!r} is already served from {seen[entry.manifest.id]}"
                entry = PrefabEntry(path, entry.manifest, (duplicate,))
            if entry.ok and entry.manifest is not None:
                seen[entry.manifest.id] = path
            else:
                logger.error("broken prefab %s: %s", path, "; ".join(entry.problems))
            entries.append(entry)
        return cls(entries)

    def loaded(self) -> list[PrefabEntry]:
        return [e for e in self.entries if e.ok]

    def get(self, prefab_id: str) -> PrefabEntry:
        for entry in self.loaded():
            if entry.manifest is not None and entry.manifest.id == prefab_id:
                return entry
        raise PrefabNotFound(f"no loaded prefab {prefab_id!r}")

    def resolve(self, prefab_id: str | None, function_name: str) -> Target:
        """Find the function; ``prefab_id`` may be omitted when the name is unique."""
        if prefab_id is not None:
            entry = self.get(prefab_id)
            assert entry.manifest is not None
            spec = entry.manifest.function(function_name)
            if spec is None:
                raise PrefabNotFound(f"prefab {prefab_id!r} has no function {function_name!r}")
            return Target(entry, entry.manifest, spec)
        matches = [
            Target(e, e.manifest, spec)
            for e in self.loaded()
            if e.manifest is not None and (spec := e.manifest.function(function_name)) is not None
        ]
        if not matches:
            raise PrefabNotFound(f"no loaded prefab has a function {function_name!r}")
        if len(matches) > 1:
            ids = ", ".join(t.manifest.id for t in matches)
            raise PrefabNotFound(f"function {function_name!r} is served by several prefabs ({ids}): name prefab_id")
        return matches[0]


def _load_entry(path: Path) -> PrefabEntry:
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        return PrefabEntry(path, None, (exc.message,))
    problems = manifest_problems(manifest, path / SOURCE_PATH)
    return PrefabEntry(path, manifest, tuple(f"{path / SOURCE_PATH}: {problem}" for problem in problems))
