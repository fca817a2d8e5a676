"""A hostile prefab tries everything it should not be able to do, and is shown each refusal.

The factory runs as root here (as in a container), with ``FACTORY_RUNNER_USER=nobody`` and a
Redis that requires a password, as ``factory up`` configures its embedded one. The prefab is a
real wheel deployed over HTTP; its function reports what it could see and reach.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from factory_cli.embedded_redis import EmbeddedRedis
from tests.prefab_kit import build, deploy, function, make_prefab, wait_deployed
from tests.stack import Stack, invoke, wait_status

PREFAB_PYTHON = "/usr/bin/python3"  # the runners' user must be able to run it (the factory's may live in /root)

HOSTILE_MAIN = """
import os
import socket

def _try(action):
    try:
        return {"ok": True, "value": action()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}

def _readable_environs():
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    data = handle.read()
                if b"REDIS_URL" in data or b"FACTORY_" in data:
                    found.append(int(pid))
            except OSError:
                pass
    return found

def _redis_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"PING\\r\\n")
        return conn.recv(200).decode()

def snoop(redis_port: int, state_dir: str) -> dict:
    return {
        "uid": os.getuid(),
        "env": sorted(os.environ),
        "declared": os.environ.get("HOSTILE_TOKEN"),
        "parent_environ": _try(lambda: open(f"/proc/{os.getppid()}/environ", "rb").read().decode()),
        "readable_environs": _readable_environs(),
        "redis": _try(lambda: _redis_ping(redis_port)),
        "list_state": _try(lambda: os.listdir(state_dir)),
        "list_work": _try(lambda: os.listdir(os.path.join(state_dir, "work"))),
        "list_files": _try(lambda: os.listdir(os.path.join(state_dir, "files"))),
        "own_workspace": _try(lambda: open("data/outputs/mine.txt", "w").write("mine")),
    }
"""


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis-state", password="not-for-prefabs", extra_config=["save ''"]) as server:
        yield server


@pytest.mark.skipif(os.getuid() != 0 or not Path(PREFAB_PYTHON).exists(), reason="needs root and Debian's python3")
def test_hostile_prefab_sees_only_its_job_and_declared_secrets(locked_redis: EmbeddedRedis, tmp_path: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="factory-sandbox-"))
    workdir.chmod(0o711)  # the runners' user must reach its workspace under it, as under /srv
    stack = Stack(locked_redis.url, workdir)
    stack.env.update(
        {
            "FACTORY_RUNNER_USER": "nobody",
            "FACTORY_PREFAB_PYTHON": PREFAB_PYTHON,
            "FACTORY_ENV_DIR": str(workdir / "envs"),
            "HOSTILE_TOKEN": "declared-value",
            "OTHER_SECRET": "undeclared-value",
            "AWS_SECRET_ACCESS_KEY": "factory-credential",
            "FACTORY_TOKEN_SECRET": "factory-signing-key",
        }
    )
    try:
        gateway = stack.start_gateway()
        stack.start_worker()
        snoop = function(
            "snoop",
            parameters=[
                {"name": "redis_port", "type": "integer", "required": True},
                {"name": "state_dir", "type": "string", "required": True},
            ],
        )
        snoop["secrets"] = [{"name": "HOSTILE_TOKEN", "description": "its own", "required": True}]
        wheel = build(make_prefab(tmp_path, "hostile", "1.0.0", HOSTILE_MAIN, [snoop]), tmp_path / "dist")
        response = deploy(gateway.url, wheel, "hostile", "1.0.0")
        assert response.status_code == 202, response.text
        assert wait_deployed(gateway.url, response.json()["deployment_id"])["state"] == "ready"
        state_dir = str(workdir / "state")
        inputs = {"redis_port": locked_redis.port, "state_dir": state_dir}
        job_id = invoke(gateway.url, "snoop", inputs, prefab_id="hostile")
        job = wait_status(gateway.url, job_id, {"finished", "failed"}, timeout_s=120)
        assert job["status"] == "finished", job
        seen: dict[str, Any] = job["output"]
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert seen["uid"] != 0
    assert seen["declared"] == "declared-value"
    leaked = [n for n in seen["env"] if n.startswith(("REDIS", "FACTORY_", "AWS_")) or n == "OTHER_SECRET"]
    assert leaked == []
    assert seen["parent_environ"] == {"ok": False, "error": "PermissionError"}
    assert seen["readable_environs"] == []
    assert seen["redis"]["ok"] and seen["redis"]["value"].startswith("-NOAUTH")
    for probe in ("list_state", "list_work", "list_files"):
        assert seen[probe] == {"ok": False, "error": "PermissionError"}, (probe, seen[probe])
    assert seen["own_workspace"] == {"ok": True, "value": 4}
