"""Imports each loaded prefab's ``src/main.py`` by file path, once, when the worker starts.

Modules are registered under a private name per prefab (``prefab_<id>``) so two prefabs may
both call their module ``main``. The prefab's ``src/`` is put on ``sys.path`` so its own
sibling modules import as its tests import them. A prefab that fails to import is logged with
its file and the reason, and its functions answer ``UNEXPECTED_ERROR`` instead of running.
"""

import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.catalog import Catalog, PrefabEntry

logger = logging.getLogger(__name__)

PrefabFunction = Callable[..., Any]


@dataclass
class LoadedPrefabs:
    """The callables of every prefab that imported, and why the others did not."""

    functions: dict[tuple[str, str], PrefabFunction] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def secret_names(self, catalog: Catalog) -> set[str]:
        return {
            secret.name
            for entry in catalog.loaded()
            if entry.manifest is not None
            for spec in entry.manifest.functions
            for secret in spec.secrets
        }


def _module_name(prefab_id: str) -> str:
    return "prefab_" + re.sub(r"[^0-9A-Za-z_]", "_", prefab_id)


def _import_source(path: Path, module_name: str) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    src_dir = str(path.parent)
    if src_dir not in sys.path:
        sys.path.insert(0, src_dir)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _import_entry(entry: PrefabEntry, loaded: LoadedPrefabs) -> None:
    manifest = entry.manifest
    assert manifest is not None
    try:
        module = _import_source(entry.source_path, _module_name(manifest.id))
    except Exception as exc:  # any error raised by prefab code at import
        reason = f"{entry.source_path}: import failed: {type(exc).__name__}: {exc}"
        logger.error("broken prefab %s", reason)
        loaded.broken[manifest.id] = reason
        return
    for spec in manifest.functions:
        function = getattr(module, spec.name, None)
        if not callable(function) or inspect.isclass(function):
            loaded.broken[manifest.id] = f"{entry.source_path}: {spec.name} is not a function after import"
            continue
        loaded.functions[(manifest.id, spec.name)] = function


def import_prefabs(catalog: Catalog) -> LoadedPrefabs:
    """Import every prefab the catalog loaded (its manifest already matched its source)."""
    loaded = LoadedPrefabs()
    for entry in catalog.loaded():
        _import_entry(entry, loaded)
    logger.info("imported %d prefab functions (%d broken prefabs)", len(loaded.functions), len(loaded.broken))
    return loaded
