"""Scenario: what a deployment costs before its first job — the wheel built from a folder
(hatchling through uv), its environment built cold (a fresh uv venv and the wheel installed), then
found cached (a redeploy of the same wheel, or a restart: nothing is built again).
"""

import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench.context import Context
from bench.results import Figure, ScenarioResult
from factory.wheels import build_wheel, read_wheel, template_pyproject
from worker.environments import Environments, environment_key

NAME = "environments"

_MAIN = "def hello(name: str) -> dict:\n    return {'hello': name}\n"


def _prefab(root: Path) -> Path:
    folder = root / "bench-env"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "__init__.py").write_text("")
    (folder / "src" / "main.py").write_text(_MAIN)
    function = {"name": "hello", "parameters": [{"name": "name", "type": "string", "required": True}]}
    (folder / "prefab-manifest.json").write_text(
        json.dumps({"id": "bench-env", "version": "1.0.0", "functions": [function]})
    )
    (folder / "pyproject.toml").write_text(template_pyproject("bench-env", "1.0.0"))
    return folder


def _measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-env-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        wheel = build_wheel(_prefab(root), root / "dist")
        built_s = time.perf_counter() - started
        key = environment_key(read_wheel(wheel.read_bytes()).sha256, None)
        envs = Environments(root / "envs")
        started = time.perf_counter()
        envs.ensure(key, wheel, None, lambda step, detail: None)
        cold_s = time.perf_counter() - started
        started = time.perf_counter()
        Environments(root / "envs").ensure(key, wheel, None, lambda step, detail: None)  # as after a restart
        cached_s = time.perf_counter() - started
    return {"wheel_s": built_s, "cold_s": cold_s, "cached_s": cached_s}


async def run(ctx: Context) -> ScenarioResult:
    found = await asyncio.to_thread(_measure)
    figures = [
        Figure(NAME, "wheel built from a folder (hatchling via uv)", found["wheel_s"] * 1000, "ms"),
        Figure(NAME, "environment built cold (uv venv + install)", found["cold_s"] * 1000, "ms"),
        Figure(
            NAME,
            "environment found cached (redeploy, restart)",
            found["cached_s"] * 1000,
            "ms",
            "built cold",
            found["cold_s"] * 1000,
        ),
    ]
    return ScenarioResult(NAME, figures, details=found)
