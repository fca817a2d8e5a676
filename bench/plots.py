"""The curves of the ``curves`` scenario as PNGs (``make bench`` writes them under ``docs/curves/``).

Drawn from the scenario's JSON details only, so a recorded ``results.json`` can be plotted again:
``python -m bench.plots bench/results.json docs/curves``.
"""

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

FACTORY, PEER = "#1f77b4", "#d62728"


def _save(fig: Any, out: Path, name: str, title: str) -> Path:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _callers(data: dict[str, list[dict[str, float]]], out: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system, color in (("factory", FACTORY), ("peer", PEER)):
        rows = data.get(system, [])
        if not rows:
            continue
        n = [r["callers"] for r in rows]
        label = "factory" if system == "factory" else "peer stack (FastAPI + Celery)"
        left.plot(n, [r["ttfe_p50_ms"] for r in rows], "o-", color=color, label=f"{label} p50")
        left.plot(n, [r["ttfe_p99_ms"] for r in rows], "o--", color=color, label=f"{label} p99")
        right.plot(n, [r["events_per_s"] for r in rows], "o-", color=color, label=label)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent callers (each: firehose(100), read to the end, again)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("time to first event, ms (log)")
    right.set_ylabel("events/s delivered")
    return _save(fig, out, "callers.png", "Time to first event and events/s vs concurrent callers (2 workers)")


def _streams(rows: list[dict[str, float]], out: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    n = [r["streams"] for r in rows]
    left.plot(n, [r["gateway_cpu_ms_per_1000_events"] for r in rows], "o-", color=FACTORY)
    left.set_ylabel("gateway CPU ms per 1,000 events delivered")
    right.plot(n, [r["rss_per_stream_kb"] for r in rows], "o-", color=FACTORY)
    right.set_ylabel("gateway RSS per open stream, KB")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("open streams on one gateway (100 readers per job)")
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out, "streams.png", "Gateway cost vs open streams")


def _memory(data: dict[str, list[dict[str, float]]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for system, color in (("factory", FACTORY), ("peer", PEER)):
        rows = data.get(system, [])
        if rows:
            label = "factory" if system == "factory" else "peer stack (list only)"
            ax.plot(
                [r["events_per_job"] for r in rows],
                [r["bytes_per_job"] / 1024 for r in rows],
                "o-",
                color=color,
                label=label,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events per job (firehose, ~40 B of JSON each)")
    ax.set_ylabel("Redis used_memory per finished job, KB")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "redis-memory.png", "Redis memory per finished job (held for the retention)")


def _workers(rows: list[dict[str, float]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    n = [r["workers"] for r in rows]
    job_s = rows[0]["job_s"]
    ax.plot(n, [r["sleep_jobs_per_s"] for r in rows], "o-", color=FACTORY, label=f"sleep-bound ({job_s:g} s sleep)")
    ax.plot(n, [r["cpu_jobs_per_s"] for r in rows], "s-", color=PEER, label=f"CPU-bound ({job_s:g} s CPU)")
    ax.plot(n, [k / job_s for k in n], ":", color="gray", label="ideal, sleep-bound")
    ax.set_xlabel("worker processes")
    ax.set_ylabel("jobs/s")
    ax.set_xticks(n)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "workers.png", "Jobs/s vs worker processes (2 cores)")


def plot(curves: dict[str, Any], out: Path) -> list[Path]:
    """Write one PNG per curve present in ``curves`` (the scenario's details); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if curves.get("callers"):
        written.append(_callers(curves["callers"], out))
    if curves.get("streams"):
        written.append(_streams(curves["streams"], out))
    if curves.get("memory"):
        written.append(_memory(curves["memory"], out))
    if curves.get("workers"):
        written.append(_workers(curves["workers"], out))
    return written


def main() -> None:
    results, out = Path(sys.argv[1]), Path(sys.argv[2])
    details = json.loads(results.read_text())["scenarios"]["curves"]["details"]
    for path in plot(details, out):
        sys.stdout.write(f"{path}\n")


if __name__ == "__main__":
    main()
