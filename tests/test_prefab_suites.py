"""Each bundled prefab's own tests, run as their author runs them (pytest in the prefab folder)."""

import subprocess
import sys
from pathlib import Path

import pytest

from factory.manifest import find_prefab_dirs

ROOT = Path(__file__).resolve().parent.parent
PREFABS = find_prefab_dirs([ROOT / "prefabs"])


def test_the_bundled_prefabs_are_found() -> None:
    assert [p.name for p in PREFABS] == ["streaming-examples"]


@pytest.mark.parametrize("prefab", PREFABS, ids=lambda p: p.name)
def test_prefab_own_tests_pass(prefab: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=prefab,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
