"""``python -m bench``: start a private Redis, gateways and workers on the loopback, run bounded
scenarios, print each figure beside its baseline from the same run, and write the results as JSON.

    python -m bench                         # every scenario, full sizes (~10 min on 2 cores)
    python -m bench --quick                 # small sizes, a smoke run (< 2 min)
    python -m bench --only many-jobs        # one scenario (repeatable)
    python -m bench --json out.json         # where to write the results (default bench/results.json)
"""

import argparse
import asyncio
import logging
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from bench.context import FULL, QUICK, Context
from bench.procs import Cluster, raise_open_files_limit
from bench.results import ScenarioResult, table, write_json
from bench.scenarios import (
    ceilings,
    connections,
    curves,
    environments,
    fanout,
    first_event,
    many_jobs,
    one_stream,
    peer,
    sandbox,
    scaling,
)

logger = logging.getLogger("bench")

Scenario = Callable[[Context], Awaitable[ScenarioResult]]
SCENARIOS: dict[str, Scenario] = {
    ceilings.NAME: ceilings.run,
    one_stream.NAME: one_stream.run,
    first_event.NAME: first_event.run,
    fanout.NAME: fanout.run,
    many_jobs.NAME: many_jobs.run,
    connections.NAME: connections.run,
    scaling.NAME: scaling.run,
    environments.NAME: environments.run,
    sandbox.NAME: sandbox.run,
    peer.NAME: peer.run,
    curves.NAME: curves.run,
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"
PLOTS = Path(__file__).resolve().parent.parent / "docs" / "curves"
PACKAGES = (
    "redis",
    "hiredis",
    "rq",
    "celery",
    "fastapi",
    "starlette",
    "sse-starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "orjson",
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of under 2 minutes")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), help="run only this scenario (repeatable)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--workdir", type=Path, help="keep Redis data and process logs here (default: a temp dir)")
    parser.add_argument(
        "--plots",
        type=Path,
        help=f"where the curves scenario's PNGs go (default: {PLOTS} on a full run, none on --quick)",
    )
    return parser.parse_args(argv)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _redis_version(cluster: Cluster) -> str:
    assert cluster.redis is not None
    info: dict[str, Any] = redis.Redis.from_url(cluster.redis.url).info("server")
    return str(info.get("redis_version"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _meta(args: argparse.Namespace, cluster: Cluster, open_files: int) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "scenarios": args.only or list(SCENARIOS),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "open_files_limit": open_files,
        },
        "versions": {"redis-server": _redis_version(cluster), **{p: _version(p) for p in PACKAGES}},
    }


async def _run(args: argparse.Namespace, cluster: Cluster) -> list[ScenarioResult]:
    sizes = QUICK if args.quick else FULL
    results: list[ScenarioResult] = []
    ctx = Context(cluster, sizes)
    try:
        for name in args.only or list(SCENARIOS):
            logger.info("scenario %s ...", name)
            began = time.monotonic()
            load_before = os.getloadavg()[0]
            try:
                result = await SCENARIOS[name](ctx)
            except Exception as exc:  # one failing scenario must not lose the others' figures
                logger.error("scenario %s failed:\n%s", name, traceback.format_exc())
                result = ScenarioResult(name, error=f"{type(exc).__name__}: {exc}")
            result.elapsed_s = time.monotonic() - began
            result.load_1m = (load_before, os.getloadavg()[0])
            logger.info("scenario %s done in %.1f s", name, result.elapsed_s)
            results.append(result)
        if ctx.baselines:
            results.append(ScenarioResult("baselines", details=ctx.baselines))
    finally:
        ctx.caller.close()
    return results


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop  # noqa: PLC0415 - optional: a cheaper client when installed
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so `kill <pid>` unwinds like Ctrl-C and every child is stopped


def _plot(args: argparse.Namespace, results: list[ScenarioResult]) -> None:
    out = args.plots or (None if args.quick else PLOTS)
    measured = next((r for r in results if r.name == curves.NAME and not r.error), None)
    if out is None or measured is None:
        return
    from bench import plots  # noqa: PLC0415 - matplotlib is the bench extra's, needed only here

    for path in plots.plot(measured.details, out):
        logger.info("curve written: %s", path)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    open_files = raise_open_files_limit()
    with tempfile.TemporaryDirectory(prefix="factory-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(workdir.resolve())
        try:
            cluster.start_redis()
            meta = _meta(args, cluster, open_files)
            with _event_loop_runner() as runner:
                results = runner.run(_run(args, cluster))
        finally:
            cluster.stop_all()
    write_json(args.json, meta, results)
    _plot(args, results)
    sys.stdout.write(table([r for r in results if r.figures or r.error]) + "\n")
    sys.stdout.write(f"\nresults written to {args.json}\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
