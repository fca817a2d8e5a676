"""The benchmark runs end to end at its smallest sizes and reports every event delivered.

Only the shape of its JSON and the no-loss counts are checked: timing is the benchmark's
business, never a test's.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_quick_benchmark_delivers_every_event(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    scenarios = ["--only", "one-stream", "--only", "many-jobs", "--only", "peer"]
    command = [sys.executable, "-m", "bench", "--quick", *scenarios, "--json", str(out)]
    bench = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = bench.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        bench.terminate()  # SIGTERM: the bench stops the processes it started before exiting
        output, _ = bench.communicate(timeout=30)
        pytest.fail("the quick benchmark did not finish in 240 s:\n" + output[-3000:])
    assert bench.returncode == 0, output[-3000:]

    results = json.loads(out.read_text())
    assert results["meta"]["mode"] == "quick"
    assert set(results["scenarios"]) >= {"one-stream", "many-jobs", "peer", "baselines"}
    for name in ("one-stream", "many-jobs", "peer"):
        scenario = results["scenarios"][name]
        assert scenario["error"] is None
        assert scenario["figures"], name
        for figure in scenario["figures"]:
            assert {"name", "value", "unit", "baseline_value", "ratio", "target", "holds"} <= set(figure)
        assert scenario["details"]["lost"] == 0
        assert scenario["details"]["repeated"] == 0
        assert scenario["details"]["out_of_order"] == 0
    many = results["scenarios"]["many-jobs"]["details"]
    assert many["jobs"] == 100
    assert many["not_done"] == 0
    assert many["events_received"] == many["jobs"] * (many["events_per_job"] + 1)
    # The peer stack ran in the same run: every figure compared with it has its baseline.
    peer = results["scenarios"]["peer"]
    assert all(f["baseline_value"] for f in peer["figures"] if f["baseline_name"])
    for system in ("factory", "peer"):
        batch = peer["details"]["many_jobs"][system]
        assert batch["not_done"] == 0, system
        assert batch["lost"] == 0, system
