"""Test prefab folders laid out as the ecosystem's template lays them out, and small wheels to depend on.

A prefab folder here has ``prefab-manifest.json``, ``src/__init__.py``, ``src/main.py`` (plus any
sibling modules) and, unless asked otherwise, a hatchling ``pyproject.toml`` that packs ``src`` and
force-includes the manifest at the wheel's root, as the template does.
"""

import json
import sys
from pathlib import Path

from factory.uvrun import child_environment, index_environment, run_uv
from factory.wheels import template_pyproject

MAIN_PY = '''"""A test prefab."""

from src import helpers


def whoami() -> dict[str, str]:
    """Which prefab, which helpers and which pinned-thing this environment imports."""
    import pinned_thing

    return {"helpers": helpers.NAME, "pinned_thing": pinned_thing.VERSION}
'''


def manifest(prefab_id: str, version: str) -> dict[str, object]:
    return {
        "id": prefab_id,
        "version": version,
        "name": prefab_id,
        "description": "A test prefab",
        "functions": [{"name": "whoami", "description": "who am I", "parameters": []}],
    }


def write_prefab(
    folder: Path,
    prefab_id: str,
    version: str = "1.0.0",
    *,
    dependencies: tuple[str, ...] = (),
    pyproject: bool = True,
    pyproject_version: str | None = None,
    manifest_target: str = "prefab-manifest.json",
    helpers_name: str | None = None,
) -> Path:
    """Write a prefab folder; ``helpers_name`` is what its ``src/helpers.py`` says it is."""
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "prefab-manifest.json").write_text(json.dumps(manifest(prefab_id, version)), encoding="utf-8")
    (folder / "src" / "main.py").write_text(MAIN_PY, encoding="utf-8")
    (folder / "src" / "helpers.py").write_text(f"NAME = {helpers_name or prefab_id!r}\n", encoding="utf-8")
    if pyproject:
        (folder / "src" / "__init__.py").write_text("", encoding="utf-8")
        text = template_pyproject(
            prefab_id, pyproject_version or version, dependencies=dependencies, manifest_target=manifest_target
        )
        (folder / "pyproject.toml").write_text(text, encoding="utf-8")
    return folder


def build_package_wheels(out_dir: Path, name: str, versions: tuple[str, ...], work: Path) -> None:
    """Build one tiny pure-Python package at several versions with hatchling, as wheels in ``out_dir``."""
    module = name.replace("-", "_")
    for version in versions:
        source = work / f"{name}-{version}"
        (source / module).mkdir(parents=True)
        (source / module / "__init__.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
        (source / "pyproject.toml").write_text(
            f'[project]\nname = "{name}"\nversion = "{version}"\nrequires-python = ">=3.11"\n'
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n',
            encoding="utf-8",
        )
        run = run_uv(
            ["build", "--wheel", "--python", sys.executable, "--out-dir", str(out_dir), str(source)],
            env=child_environment(index_environment()),
            timeout_s=300,
        )
        assert run.ok, run.output
