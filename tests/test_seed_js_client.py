"""The seed's JavaScript client, unchanged but for the URL, run by Node.js against a real gateway."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.stack import Gateway

pytestmark = pytest.mark.e2e

CLIENT = Path(__file__).parent / "clients" / "seed_client.mjs"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (the seed's JS client needs a JS runtime)")
def test_seed_javascript_client_unchanged(gateway: Gateway) -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(CLIENT), f"{gateway.url}/invoke/my_stream_function"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"progress: {p}%" for p in (20, 40, 60, 80, 100)] + ["", "done!"]
