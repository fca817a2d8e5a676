"""The job commands of the CLI (invoke, jobs, status, follow, cancel) against a real gateway and workers:
one exit code per outcome, files uploaded, the gateway found without --url, the progress bar in a pty."""

import json
import logging
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from factory_cli.app import app
from factory_cli.embedded_redis import free_port
from factory_cli.gateway_record import write_record
from tests.stack import ROOT, Gateway, wait_status

pytestmark = pytest.mark.e2e

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={**WIDE, **(env or {})})
    return result.exit_code, result.stdout, result.stderr


# --- help ------------------------------------------------------------------------------------------


def test_help_shows_env_hints_flags_and_exit_codes() -> None:
    code, out, _ = cli("up", "--help")
    assert code == 0
    assert "[env FACTORY_PORT]" in out and "[env FACTORY_WORKERS]" in out
    code, out, _ = cli("invoke", "--help")
    assert "-d, --detach " in out
    assert "<bool>" not in out
    assert "--file GROUP=PATH" in out
    assert "[default: FACTORY_URL" in out
    assert "4 gateway unreachable or unavailable" in out
    code, out, _ = cli("--help")
    for command in ("invoke", "jobs", "status", "follow", "cancel"):
        assert f"  {command} " in out
    assert "Exit codes: 0 done; 1 the job failed; 2 usage or bad input; 3 not found" in out


# --- one exit code per outcome --------------------------------------------------------------------


def test_a_finished_job_exits_0_with_its_result_on_stdout(gateway: Gateway) -> None:
    code, out, err = cli("invoke", "word_count", "-i", "text=b a b", "--url", gateway.url)
    assert code == 0, err
    assert json.loads(out)["top"][0] == ["b", 2]


def test_a_failed_job_exits_1(gateway: Gateway) -> None:
    code, _, err = cli("invoke", "raises", "--prefab", "behaviours", "-i", "message=kaput", "--url", gateway.url)
    assert code == 1
    assert "UNEXPECTED_ERROR" in err and "kaput" in err


def test_bad_inputs_exit_2_naming_each_field(gateway: Gateway) -> None:
    code, _, err = cli("invoke", "typed", "--prefab", "behaviours", "-i", "count=many", "--url", gateway.url)
    assert code == 2
    assert "VALIDATION_ERROR" in err
    assert "inputs.text: field required" in err
    assert "inputs.count: expected integer, got string" in err


def test_a_malformed_flag_exits_2() -> None:
    assert cli("invoke", "word_count", "-i", "no-equals-sign")[0] == 2
    assert cli("invoke", "word_count", "--file", "input=/no/such/file")[0] == 2
    assert cli("jobs", "--limit", "0")[0] == 2


def test_unknown_function_and_job_exit_3(gateway: Gateway) -> None:
    assert cli("invoke", "no_such_function", "--url", gateway.url)[0] == 3
    unknown = "0" * 32
    for command in ("status", "follow", "cancel"):
        code, _, err = cli(command, unknown, "--url", gateway.url)
        assert code == 3, (command, err)
        assert "NOT_FOUND" in err


def test_an_unreachable_gateway_exits_4() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["invoke", "word_count", "-i", "text=a"], ["jobs"], ["status", "x" * 32]):
        code, _, err = cli(*args, "--url", url)
        assert code == 4, (args, err)
        assert "CONNECTION_ERROR" in err


# --- jobs, status, follow, cancel -----------------------------------------------------------------


def _detached(gateway: Gateway, *args: str) -> str:
    code, out, err = cli("invoke", *args, "--detach", "--url", gateway.url)
    assert code == 0, err
    return str(json.loads(out)["job_id"])


def test_jobs_lists_recent_jobs_filtered(gateway: Gateway) -> None:
    done = _detached(gateway, "word_count", "-i", "text=listed")
    failed = _detached(gateway, "raises", "--prefab", "behaviours", "-i", "message=listed")
    wait_status(gateway.url, done, {"finished"})
    wait_status(gateway.url, failed, {"failed"})

    code, out, _ = cli("jobs", "--json", "--function", "word_count", "--url", gateway.url)
    assert code == 0
    listed = json.loads(out)
    assert done in [job["job_id"] for job in listed]
    assert {job["function_name"] for job in listed} == {"word_count"}

    code, out, _ = cli("jobs", "--json", "--status", "failed", "--prefab", "behaviours", "--url", gateway.url)
    failed_ids = [job["job_id"] for job in json.loads(out)]
    assert failed in failed_ids and done not in failed_ids

    code, out, _ = cli("jobs", "--url", gateway.url)
    assert code == 0 and done in out and "finished" in out


def test_status_exits_by_the_job_outcome(gateway: Gateway) -> None:
    done = _detached(gateway, "word_count", "-i", "text=status")
    failed = _detached(gateway, "raises", "--prefab", "behaviours", "-i", "message=status")
    wait_status(gateway.url, done, {"finished"})
    wait_status(gateway.url, failed, {"failed"})
    code, out, _ = cli("status", done, "--json", "--url", gateway.url)
    assert code == 0
    assert json.loads(out)["output"]["words"] == 1
    code, out, _ = cli("status", failed, "--url", gateway.url)
    assert code == 1
    assert "UNEXPECTED_ERROR: RuntimeError: status" in out


def test_follow_replays_a_job_and_starts_after_a_seq(gateway: Gateway) -> None:
    job_id = _detached(gateway, "my_stream_function", "-i", "param=followed")
    code, out, err = cli("follow", job_id, "--url", gateway.url)
    assert code == 0, err
    assert '"status": "completed"' in out
    assert err.count("start:") == 1
    code, out, err = cli("follow", job_id, "--after", "1", "--url", gateway.url)
    assert code == 0
    assert "start:" not in err  # seq 1 was the start event


def test_cancel_stops_a_running_job(gateway: Gateway) -> None:
    job_id = _detached(gateway, "sleeper", "--prefab", "behaviours", "-i", "seconds=60")
    wait_status(gateway.url, job_id, {"started"})
    code, out, _ = cli("cancel", job_id, "--url", gateway.url)
    assert code == 0
    assert wait_status(gateway.url, job_id, {"canceled"})["error"]["code"] == "CANCELED"
    assert cli("status", job_id, "--url", gateway.url)[0] == 1
    code, _, err = cli("follow", job_id, "--url", gateway.url)
    assert code == 1 and "CANCELED" in err


def test_invoke_uploads_files_and_passes_their_references(gateway: Gateway, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("one two\nthree\n")
    code, out, err = cli("invoke", "process_large_file", "--file", f"input={notes}", "--url", gateway.url)
    assert code == 0, err
    assert "uploaded" in err and "upload://" in err
    done = json.loads(out)
    assert done["processed"] == 2
    job = httpx.get(f"{gateway.url}/jobs", params={"function_name": "process_large_file", "limit": 1}).json()
    [link] = job["jobs"][0]["files"]["output"]
    assert json.loads(httpx.get(link).content)["words"] == 3


# --- where the gateway is -------------------------------------------------------------------------


def test_the_gateway_comes_from_factory_url_or_the_state_folder(gateway: Gateway, tmp_path: Path) -> None:
    code, _, err = cli("invoke", "word_count", "-i", "text=env", env={"FACTORY_URL": gateway.url})
    assert code == 0, err
    state = tmp_path / "state"
    write_record(state, gateway.url)
    code, _, err = cli("invoke", "word_count", "-i", "text=recorded", env={"FACTORY_STATE_DIR": str(state)})
    assert code == 0, err
    # --url wins over both
    code, _, _ = cli("jobs", "--url", f"http://127.0.0.1:{free_port()}", env={"FACTORY_URL": gateway.url})
    assert code == 4


# --- factory up's preflight -----------------------------------------------------------------------


def test_up_names_the_taken_port_and_warns_without_prefabs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        up = subprocess.run(
            [sys.executable, "-m", "factory_cli", "up", "--port", str(port), "--prefabs", str(empty)],
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "300", "FACTORY_STATE_DIR": str(tmp_path / "state")},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert up.returncode == 4, up.stderr
    assert "WARNING: no prefab to serve" in up.stderr
    assert f"port {port} on 127.0.0.1 is taken" in up.stderr
    assert not (tmp_path / "state" / "redis").exists()  # nothing was started


# --- the terminal display -------------------------------------------------------------------------


def _run_in_pty(args: list[str], timeout_s: float = 60.0) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout and stderr; its exit status and everything it wrote."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory_cli", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=ROOT,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()


def test_invoke_draws_a_progress_bar_on_a_terminal(gateway: Gateway) -> None:
    items = json.dumps({"items": [f"item-{n}" for n in range(200)]})
    code, screen = _run_in_pty(["invoke", "batch_process", "--json", items, "--url", gateway.url])
    assert code == 0, screen
    assert "━" in screen  # the bar
    assert "100%" in screen
    assert "\x1b[" in screen  # drawn with terminal control sequences
    assert "all items processed" in screen  # the done data, after the bar
