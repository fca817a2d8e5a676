"""Scenario: what the sandbox around prefab runners costs (docs/security.md).

Two figures, each with the sandbox as this machine gives it (``FACTORY_SANDBOX=auto``: bubblewrap
and a uid per deployment as root) against the same runner with ``FACTORY_SANDBOX=off``:

- a **cold runner start**: the runner process started and its prefab imported (the ``Y`` message),
  what the first job of a deployment on a work horse waits for;
- **time to first event** on a warm runner: a job's order sent → its first yielded value back,
  which includes the per-job cost of the sandbox (the workspace guard's hand-off).

Measured on the runner itself (``worker.runners``), with the factory's own interpreter as the
prefab's environment: no Redis, no HTTP, so the figures are the sandbox's share alone.
"""

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from bench.context import Context
from bench.results import Figure, ScenarioResult
from factory.isolation import probe
from factory.settings import Settings
from worker.provision import runner_spec
from worker.runners import Runner, RunnerSpec

NAME = "sandbox"

_MAIN = """
def first():
    yield {"type": "progress", "data": 1}
    yield {"type": "done", "data": None}
"""


def _spec(state_dir: Path, code_dir: Path, sandbox: Literal["auto", "off"]) -> RunnerSpec:
    settings = Settings(state_dir=state_dir, sandbox=sandbox)
    python = Path(sys.executable)
    return runner_spec(
        settings, probe(settings), key="bench-sandbox", prefab_id="bench-sandbox", python=python,
        code_dir=str(code_dir), memory_bytes=0,
    )  # fmt: skip


def _cold_starts(spec: RunnerSpec, count: int) -> list[float]:
    took: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        runner = Runner.start(spec, dict(os.environ))
        took.append(time.perf_counter() - started)
        runner.kill()
    return took


def _first_events(spec: RunnerSpec, workspace: Path, count: int) -> list[float]:
    runner = Runner.start(spec, dict(os.environ))
    took: list[float] = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            runner.send({"op": "run", "function": "first", "inputs": {}, "env": {}, "cwd": str(workspace)})
            assert runner.recv(30) is not None
            took.append(time.perf_counter() - started)
            while (message := runner.recv(30)) is not None and message[:1] != b"F":
                pass
    finally:
        runner.kill()
    return took


def _measure(starts: int, jobs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as scratch:
        root = Path(scratch)
        root.chmod(0o755)
        code = root / "prefab"
        (code / "src").mkdir(parents=True)
        (code / "src" / "__init__.py").write_text("")
        (code / "src" / "main.py").write_text(_MAIN)
        found: dict[str, object] = {"isolation": probe(Settings()).level}
        modes: tuple[Literal["auto", "off"], ...] = ("auto", "off")
        for mode in modes:
            spec = _spec(root / "state", code, mode)
            workspace = root / "state" / "work" / f"job-{mode}"
            workspace.mkdir(parents=True, exist_ok=True)
            if spec.uid >= 0:
                os.chown(workspace, spec.uid, spec.gid)
            found[f"start_{mode}_s"] = statistics.median(_cold_starts(spec, starts))
            found[f"first_event_{mode}_s"] = statistics.median(_first_events(spec, workspace, jobs))
    return found


async def run(ctx: Context) -> ScenarioResult:
    found = await asyncio.to_thread(_measure, ctx.sizes.start_probes, ctx.sizes.ttfe_jobs)
    level = found["isolation"]
    ms = {name: float(value) * 1000 for name, value in found.items() if isinstance(value, float)}
    figures = [
        Figure(NAME, f"cold runner start, sandbox {level} (p50)", ms["start_auto_s"], "ms",
               "no sandbox", ms["start_off_s"]),
        Figure(NAME, f"order → first event on a warm runner, sandbox {level} (p50)", ms["first_event_auto_s"], "ms",
               "no sandbox", ms["first_event_off_s"]),
    ]  # fmt: skip
    return ScenarioResult(NAME, figures, details=found)
