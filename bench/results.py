"""The figures a run produces, their targets, and the two ways they leave the run: a table and JSON.

A figure carries its baseline (measured in the same run) and, where the issue sets one, a
target on either the figure itself or its ratio to the baseline.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Target:
    """``value`` or ``ratio`` must be ``>=`` or ``<=`` ``threshold``."""

    on: Literal["value", "ratio"]
    op: Literal[">=", "<="]
    threshold: float

    def holds(self, value: float, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None or math.isnan(subject):
            return None
        return subject >= self.threshold if self.op == ">=" else subject <= self.threshold

    def describe(self, unit: str) -> str:
        if self.on == "ratio":
            return f"ratio {self.op} {self.threshold:g}"
        return f"{self.op} {self.threshold:g} {unit}"


@dataclass(frozen=True)
class Figure:
    scenario: str
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    target: Target | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline_value is None or self.baseline_value == 0 or math.isnan(self.baseline_value):
            return None
        return self.value / self.baseline_value

    @property
    def holds(self) -> bool | None:
        return self.target.holds(self.value, self.ratio) if self.target else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = self.target.describe(self.unit) if self.target else None
        out["ratio"] = self.ratio
        out["holds"] = self.holds
        return out


@dataclass
class ScenarioResult:
    name: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    error: str | None = None
    load_1m: tuple[float, float] = (0.0, 0.0)  # load average before and after: other work on the machine shows here


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(results: list[ScenarioResult]) -> str:
    """A plain-text table: figure, value, baseline, ratio, target and whether it holds."""
    header = ("scenario", "figure", "value", "unit", "baseline", "baseline value", "ratio", "target", "holds")
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        if result.error:
            rows.append((result.name, "FAILED: " + result.error[:80], "", "", "", "", "", "", ""))
        for fig in result.figures:
            holds = {None: "", True: "yes", False: "NO"}[fig.holds]
            rows.append(
                (
                    fig.scenario,
                    fig.name,
                    _number(fig.value),
                    fig.unit,
                    fig.baseline_name or "",
                    _number(fig.baseline_value),
                    f"{fig.ratio:.2f}x" if fig.ratio is not None else "",
                    fig.target.describe(fig.unit) if fig.target else "",
                    holds,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """JSON has no NaN: an unmeasured number becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, meta: dict[str, Any], results: list[ScenarioResult]) -> None:
    """Write the run's results as JSON (NaN becomes null)."""
    document = {
        "meta": meta,
        "scenarios": {
            r.name: {
                "elapsed_s": round(r.elapsed_s, 2),
                "load_1m_before_after": r.load_1m,
                "error": r.error,
                "figures": [f.to_json() for f in r.figures],
                "details": r.details,
            }
            for r in results
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(document), indent=2, default=str, allow_nan=False) + "\n")
