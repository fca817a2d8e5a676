"""A hostile prefab tries everything it should not be able to do, and each attempt fails.

The factory runs as root here (as in CI and in a container) with its defaults: each deployment
runs as a uid of its own inside bubblewrap, against a Redis that requires a password (as
``factory up`` configures its embedded one). The hostile prefab is a real wheel deployed over
HTTP, twice: ``hostile`` (network policy ``outbound``, the default) and ``hostile-offline``
(``none``, set by the operator). Its functions report what they could see and reach; a folder
prefab, ``bystander``, runs one job alongside all of them on another worker and must not notice.

The whole scene plays once per module (:func:`scene`), the tests each check one attempt.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from factory.isolation import probe, warning
from factory.settings import Settings
from factory_cli.embedded_redis import EmbeddedRedis
from tests.prefab_kit import build, deploy, function, make_prefab, wait_deployed
from tests.stack import ROOT, Stack, events_url, invoke, read_events, wait_status
from worker.provision import runner_spec
from worker.runners import Runner
from worker.sandbox import MountPlan, mount_args

pytestmark = pytest.mark.churn

PASSWORD = "not-for-prefabs-7c1f"
MAX_PROCESSES = 48
MAX_OPEN_FILES = 256
MAX_FILE_BYTES = 8 * 1024 * 1024
WORKSPACE_BYTES = 24 * 1024 * 1024
TMP_BYTES = 4 * 1024 * 1024
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by any uid, unlike an interpreter under /root

HOSTILE_MAIN = r"""
import ctypes
import json
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection


def _try(action):
    try:
        return {"ok": True, "value": action()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}


def _proc_files(name):
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/{name}", "rb") as handle:
                    found[int(pid)] = handle.read()
            except OSError:
                pass
    return found


def _redis(port, password=None):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        if password:
            conn.sendall(f"AUTH {password}\r\n".encode())
            conn.recv(200)
        conn.sendall(b"PING\r\n")
        return conn.recv(200).decode()


def _write(path, size=1):
    with open(path, "wb") as handle:
        handle.write(b"x" * size)
    os.unlink(path)
    return size


def _open_many(count):
    handles = []
    try:
        for _ in range(count):
            handles.append(open("/dev/null", "rb"))
    finally:
        for handle in handles:
            handle.close()
    return len(handles)


def _ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        raise PermissionError(ctypes.get_errno(), "ptrace")
    return pid


def _grandparent():
    # The runner's parent's parent; in a pid namespace the worker has no pid in here at all.
    with open(f"/proc/{os.getppid()}/status") as handle:
        pid = int([line for line in handle if line.startswith("PPid:")][0].split()[1])
    if pid == 0:  # the parent is the namespace's init: whatever started it is outside, unaddressable
        raise ProcessLookupError("the worker has no pid in this namespace")
    return pid


def snoop(redis_port: int, needle: str, state_dir: str, other_workspace: str) -> dict:
    environs = _proc_files("environ")
    cmdlines = _proc_files("cmdline")
    status = open("/proc/self/status").read()
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "no_new_privs": status.split("NoNewPrivs:")[1].split()[0],
        "env": sorted(os.environ),
        "declared": os.environ.get("HOSTILE_TOKEN"),
        "operator_passed": os.environ.get("OPERATOR_PASSED"),
        "parent_environ": _try(lambda: len(open(f"/proc/{os.getppid()}/environ", "rb").read())),
        "readable_environs": [pid for pid, data in environs.items() if b"REDIS_URL" in data or b"FACTORY_" in data],
        "needle_seen": any(needle.encode() in data for data in [*environs.values(), *cmdlines.values()])
        or needle in json.dumps(dict(os.environ)),
        "redis_without_password": _try(lambda: _redis(redis_port)),
        "list_state": _try(lambda: os.listdir(state_dir)),
        "read_state_file": _try(lambda: open(os.path.join(state_dir, "factory-secret.txt")).read()),
        "list_files": _try(lambda: os.listdir(os.path.join(state_dir, "files"))),
        "list_work": _try(lambda: os.listdir(os.path.join(state_dir, "work"))),
        "list_other_workspace": _try(lambda: os.listdir(other_workspace)),
        "read_other_workspace": _try(lambda: open(os.path.join(other_workspace, "mine.txt")).read()),
        "signal_parent": _try(lambda: os.kill(os.getppid(), signal.SIGTERM)),
        "signal_worker": _try(lambda: os.kill(_grandparent(), signal.SIGTERM)),
        "ptrace_parent": _try(lambda: _ptrace(os.getppid())),
        "ptrace_worker": _try(lambda: _ptrace(_grandparent())),
        "become_root": _try(lambda: os.setuid(0)),
        "write_usr": _try(lambda: _write("/usr/hostile")),
        "write_etc": _try(lambda: _write("/etc/hostile")),
        "write_root": _try(lambda: _write("/hostile")),
        "write_environment": _try(lambda: _write(os.path.join(sys.prefix, "hostile"))),
        "write_code": _try(lambda: _write(os.path.join(os.path.dirname(__file__), "hostile.py"))),
        "write_state": _try(lambda: _write(os.path.join(state_dir, "hostile"))),
        "write_workspace": _try(lambda: _write("data/outputs/mine.txt", 4)),
        "write_big_file": _try(lambda: _write("big.bin", BIG_BYTES)),
        "fill_tmp": _try(lambda: _write("/tmp/fill.bin", TMP_FILL_BYTES)),
        "open_many_files": _try(lambda: _open_many(5000)),
    }


def reach(redis_port: int, password: str) -> dict:
    return {
        "redis_with_password": _try(lambda: _redis(redis_port, password)),
        "outside": _try(lambda: socket.create_connection(("10.255.255.1", 9), timeout=3).close()),
    }


def forge(other_job_id: str) -> dict:
    conn = Connection(int(sys.argv[1]))  # the runner's own pipe to its work horse
    event = {"type": "progress", "data": "forged", "job_id": other_job_id, "seq": 1}
    conn.send_bytes(b"E" + json.dumps(event).encode())
    conn.send_bytes(b"Zjunk for the work horse")
    time.sleep(5)
    return {"sent": True}


def fork_bomb() -> dict:
    read_end, write_end = os.pipe()
    children = []
    refused = None
    for _ in range(10_000):
        try:
            pid = os.fork()
        except OSError as exc:
            refused = type(exc).__name__
            break
        if pid == 0:
            os.close(write_end)
            os.read(read_end, 1)  # until the parent is done
            os._exit(0)
        children.append(pid)
    os.close(write_end)
    for pid in children:
        os.waitpid(pid, 0)
    return {"forked": len(children), "refused": refused}


def fill_disk():
    yield {"type": "progress", "data": {"cwd": os.getcwd()}}
    chunk = b"x" * (1024 * 1024)
    for index in range(100_000):
        with open(f"fill-{index}.bin", "wb") as handle:
            handle.write(chunk)
        time.sleep(0.01)
    yield {"type": "done", "data": "the disk never filled"}
""".replace("BIG_BYTES", str(MAX_FILE_BYTES + 1024 * 1024)).replace("TMP_FILL_BYTES", str(TMP_BYTES + 1024 * 1024))

BYSTANDER_MAIN = """
import os
import time


def keep(max_s: float = 180):
    with open("mine.txt", "w") as handle:
        handle.write("intact")
    yield {"type": "start", "data": {"cwd": os.getcwd()}}
    deadline = time.monotonic() + max_s
    ticks = 0
    while not os.path.exists("stop") and time.monotonic() < deadline:
        time.sleep(0.05)
        ticks += 1
        if ticks % 20 == 0:
            yield {"type": "progress", "data": {"ticks": ticks}}
    with open("mine.txt") as handle:
        intact = handle.read() == "intact"
    yield {"type": "done", "data": {"intact": intact, "stopped": os.path.exists("stop")}}
"""


def _functions() -> list[dict[str, Any]]:
    snoop = function(
        "snoop",
        parameters=[
            {"name": "redis_port", "type": "integer", "required": True},
            {"name": "needle", "type": "string", "required": True},
            {"name": "state_dir", "type": "string", "required": True},
            {"name": "other_workspace", "type": "string", "required": True},
        ],
    )
    snoop["secrets"] = [{"name": "HOSTILE_TOKEN", "description": "its own", "required": True}]
    reach = function(
        "reach",
        parameters=[
            {"name": "redis_port", "type": "integer", "required": True},
            {"name": "password", "type": "string", "required": True},
        ],
    )
    forge = function("forge", parameters=[{"name": "other_job_id", "type": "string", "required": True}])
    return [snoop, reach, forge, function("fork_bomb"), function("fill_disk", streaming=True)]


def _finished(gateway_url: str, job_id: str) -> dict[str, Any]:
    return wait_status(gateway_url, job_id, {"finished", "failed", "canceled"}, timeout_s=120)


def _deploy_hostile(gateway_url: str, root: Path, prefab_id: str) -> None:
    wheel = build(make_prefab(root, prefab_id, "1.0.0", HOSTILE_MAIN, _functions()), root / f"dist-{prefab_id}")
    response = deploy(gateway_url, wheel, prefab_id, "1.0.0")
    assert response.status_code == 202, response.text
    assert wait_deployed(gateway_url, response.json()["deployment_id"])["state"] == "ready"


def _first_event_data(gateway_url: str, job_id: str) -> dict[str, Any]:
    _, head = read_events(f"{gateway_url}/jobs/{job_id}/events", limit=1, timeout_s=120)
    data: dict[str, Any] = head[0].event["data"]
    return data


def _play(stack: Stack, redis_port: int, root: Path) -> dict[str, Any]:
    """Every attempt, with a bystander's job running alongside on the other worker."""
    gateway = stack.start_gateway()
    stack.start_worker()
    stack.start_worker()
    for prefab_id in ("hostile", "hostile-offline"):
        _deploy_hostile(gateway.url, root, prefab_id)
    state_dir = stack.workdir / "state"
    (state_dir / "factory-secret.txt").write_text("the factory's own")
    (state_dir / "factory-secret.txt").chmod(0o644)  # even a world-readable file is out of the view
    seen: dict[str, Any] = {"state_dir": state_dir}
    bystander = invoke(gateway.url, "keep", {}, prefab_id="bystander")
    workspace = Path(_first_event_data(gateway.url, bystander)["cwd"])
    inputs = {"redis_port": redis_port, "needle": PASSWORD, "state_dir": str(state_dir)}
    snooping = invoke(gateway.url, "snoop", {**inputs, "other_workspace": str(workspace)}, prefab_id="hostile")
    seen["snoop"] = _finished(gateway.url, snooping)
    reach = {"redis_port": redis_port, "password": PASSWORD}
    seen["reach"] = _finished(gateway.url, invoke(gateway.url, "reach", reach, prefab_id="hostile-offline"))
    forged = invoke(gateway.url, "forge", {"other_job_id": bystander}, prefab_id="hostile")
    seen["forge"] = _finished(gateway.url, forged)
    seen["forge_events"] = read_events(events_url(gateway, forged))[1]
    seen["fork_bomb"] = _finished(gateway.url, invoke(gateway.url, "fork_bomb", {}, prefab_id="hostile"))
    filler = invoke(gateway.url, "fill_disk", {}, prefab_id="hostile")
    seen["fill_workspace"] = Path(_first_event_data(gateway.url, filler)["cwd"])
    seen["fill_disk"] = _finished(gateway.url, filler)
    seen["after"] = _finished(gateway.url, invoke(gateway.url, "fork_bomb", {}, prefab_id="hostile"))
    (workspace / "stop").write_text("")
    seen["bystander"] = _finished(gateway.url, bystander)
    seen["bystander_events"] = read_events(events_url(gateway, bystander))[1]
    seen["healthz"] = httpx.get(f"{gateway.url}/healthz", timeout=10).json()
    return seen


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if os.getuid() != 0 or shutil.which("bwrap") is None:
        pytest.skip("needs root and bubblewrap (make test installs it with apt-get as root)")
    root = tmp_path_factory.mktemp("sandbox")
    folders = root / "folders"
    keep = function("keep", streaming=True, parameters=[{"name": "max_s", "type": "number", "required": False}])
    make_prefab(folders, "bystander", "1.0.0", BYSTANDER_MAIN, [keep])
    workdir = Path(tempfile.mkdtemp(prefix="factory-sandbox-"))
    with EmbeddedRedis(root / "redis-state", password=PASSWORD, extra_config=["save ''"]) as redis_server:
        stack = Stack(redis_server.url, workdir)
        stack.env.update(
            {
                "FACTORY_PREFABS": str(folders),
                "FACTORY_WORKER_HEARTBEAT_S": "1",
                "FACTORY_RUNNER_MAX_PROCESSES": str(MAX_PROCESSES),
                "FACTORY_RUNNER_MAX_OPEN_FILES": str(MAX_OPEN_FILES),
                "FACTORY_RUNNER_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
                "FACTORY_RUNNER_WORKSPACE_BYTES": str(WORKSPACE_BYTES),
                "FACTORY_RUNNER_TMP_BYTES": str(TMP_BYTES),
                "FACTORY_RUNNER_NETWORK_BY_PREFAB": json.dumps({"hostile-offline": "none"}),
                "FACTORY_RUNNER_PASS_ENV": "OPERATOR_PASSED",
                "OPERATOR_PASSED": "passed",
                "HOSTILE_TOKEN": "declared-value",
                "OTHER_SECRET": "undeclared-value",
                "AWS_SECRET_ACCESS_KEY": "factory-credential",
                "FACTORY_TOKEN_SECRET": "factory-signing-key",
            }
        )
        try:
            yield _play(stack, redis_server.port, root)
        finally:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def _report(scene: dict[str, Any]) -> dict[str, Any]:
    job = scene["snoop"]
    assert job["status"] == "finished", job
    report: dict[str, Any] = job["output"]
    return report


def _refused(attempt: dict[str, Any]) -> bool:
    return attempt["ok"] is False


def test_runs_as_an_unprivileged_user_of_its_own_without_new_privileges(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    assert seen["uid"] >= Settings().runner_uid_base and seen["gid"] == seen["uid"]
    assert seen["groups"] == [] and seen["no_new_privs"] == "1"
    assert _refused(seen["become_root"])


def test_environment_is_the_allowlist_plus_declared_secrets(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    assert seen["declared"] == "declared-value" and seen["operator_passed"] == "passed"
    allowed = {"PATH", "HOME", "TMPDIR", "VIRTUAL_ENV", "LANG", "LANGUAGE", "TZ", "HOSTILE_TOKEN", "OPERATOR_PASSED"}
    allowed |= {"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"}  # as the machine has them
    proxies = {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}
    passed = [name for name in seen["env"] if name in allowed or name.upper() in proxies or name.startswith("LC_")]
    assert passed == seen["env"]
    assert not {"OTHER_SECRET", "AWS_SECRET_ACCESS_KEY", "FACTORY_TOKEN_SECRET", "REDIS_URL"} & set(seen["env"])


def test_cannot_read_other_processes_environments(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    assert _refused(seen["parent_environ"]) and seen["readable_environs"] == []


def test_never_sees_the_redis_password_and_redis_refuses_it(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    assert seen["needle_seen"] is False
    assert seen["redis_without_password"]["value"].startswith("-NOAUTH")  # outbound: loopback reachable, locked


def test_network_none_cannot_reach_redis_even_with_the_password(scene: dict[str, Any]) -> None:
    job = scene["reach"]
    assert job["status"] == "finished", job
    assert job["output"]["redis_with_password"] == {"ok": False, "error": "ConnectionRefusedError"}
    assert _refused(job["output"]["outside"])


def test_cannot_read_the_state_folder(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    for attempt in ("list_state", "read_state_file", "list_files", "list_work"):
        assert _refused(seen[attempt]), (attempt, seen[attempt])


def test_cannot_read_another_jobs_workspace(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    assert _refused(seen["list_other_workspace"]) and _refused(seen["read_other_workspace"])


def test_cannot_signal_or_trace_its_parent_or_the_worker(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    for attempt in ("signal_parent", "ptrace_parent"):
        assert seen[attempt] == {"ok": False, "error": "PermissionError"}, (attempt, seen[attempt])
    for attempt in ("signal_worker", "ptrace_worker"):  # out of reach, or (in its pid namespace) out of sight
        assert seen[attempt] in (
            {"ok": False, "error": "PermissionError"},
            {"ok": False, "error": "ProcessLookupError"},
        )


def test_cannot_write_outside_its_workspace(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    for attempt in ("write_usr", "write_etc", "write_root", "write_environment", "write_code", "write_state"):
        assert _refused(seen[attempt]), (attempt, seen[attempt])
    assert seen["write_workspace"] == {"ok": True, "value": 4}
    assert not (scene["state_dir"] / "hostile").exists()


def test_file_size_and_private_tmp_are_limited(scene: dict[str, Any]) -> None:
    seen = _report(scene)
    assert seen["write_big_file"] == {"ok": False, "error": "OSError"}  # EFBIG: RLIMIT_FSIZE
    assert seen["fill_tmp"] == {"ok": False, "error": "OSError"}  # ENOSPC: the private /tmp is small


def test_cannot_open_thousands_of_files(scene: dict[str, Any]) -> None:
    assert _report(scene)["open_many_files"] == {"ok": False, "error": "OSError"}  # EMFILE


def test_fork_bomb_meets_the_process_limit(scene: dict[str, Any]) -> None:
    job = scene["fork_bomb"]
    assert job["status"] == "finished", job
    assert job["output"]["refused"] == "BlockingIOError" and job["output"]["forked"] < MAX_PROCESSES
    assert scene["after"]["status"] == "finished"  # the prefab's next job runs as usual


def test_filling_the_workspace_stops_the_job_cleanly(scene: dict[str, Any]) -> None:
    job = scene["fill_disk"]
    assert job["status"] == "failed" and job["error"]["code"] == "RESOURCE_EXHAUSTED", job
    assert "workspace" in job["error"]["message"]
    assert not scene["fill_workspace"].exists()  # removed with the job


def test_forged_messages_only_end_its_own_job(scene: dict[str, Any]) -> None:
    job = scene["forge"]
    assert job["status"] == "failed" and job["error"]["code"] == "UNEXPECTED_ERROR", job
    assert "unknown message" in job["error"]["message"]
    assert scene["forge_events"][-1].event["type"] == "error"
    assert all(e.event.get("data") != "forged" for e in scene["bystander_events"])


def test_a_job_alongside_is_unaffected(scene: dict[str, Any]) -> None:
    job = scene["bystander"]
    assert job["status"] == "finished", job
    assert job["output"] == {"intact": True, "stopped": True}
    assert [e.seq for e in scene["bystander_events"]] == list(range(1, len(scene["bystander_events"]) + 1))


def test_healthz_reports_full_isolation(scene: dict[str, Any]) -> None:
    health = scene["healthz"]
    assert health["status"] == "ok" and health["isolation"] == "full", health
    assert len(health["workers"]) == 2 and all(w["isolation"]["missing"] == [] for w in health["workers"])


def _wait_health_workers(gateway_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        health: dict[str, Any] = httpx.get(f"{gateway_url}/healthz", timeout=10).json()
        if health.get("workers"):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.1)


def test_degraded_isolation_is_reported(tmp_path: Path) -> None:
    """Without bubblewrap: up's warning names it and /healthz reports the isolation as partial; as
    root, runners still drop to their own uid and the policy ``none`` still holds (the runner makes
    its own network namespace)."""
    isolation = probe(Settings(bwrap_path=str(tmp_path / "no-bwrap")))
    assert isolation.private_mounts is False and isolation.bwrap is None
    loud = warning(isolation)
    assert loud is not None and "bubblewrap" in loud and isolation.level.upper() in loud
    if os.getuid() != 0 or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("the rest needs root and Debian's python3")
    workdir = Path(tempfile.mkdtemp(prefix="factory-degraded-"))
    workdir.chmod(0o711)  # without a mount view the runners' uid must reach its workspace under it
    with EmbeddedRedis(tmp_path / "redis-state", password=PASSWORD, extra_config=["save ''"]) as redis_server:
        stack = Stack(redis_server.url, workdir)
        stack.env.update(
            {
                "FACTORY_PREFABS": str(tmp_path / "no-folders"),
                "FACTORY_BWRAP_PATH": str(tmp_path / "no-bwrap"),
                "FACTORY_WORKER_HEARTBEAT_S": "1",
                # Without a mount view the runners' uid must be able to run the interpreter itself.
                "FACTORY_PREFAB_PYTHON": SYSTEM_PYTHON,
                "FACTORY_RUNNER_NETWORK": "none",
                "HOSTILE_TOKEN": "declared-value",
            }
        )
        try:
            gateway = stack.start_gateway()
            stack.start_worker()
            health = _wait_health_workers(gateway.url)
            _deploy_hostile(gateway.url, tmp_path, "hostile")
            reach = {"redis_port": redis_server.port, "password": PASSWORD}
            offline = _finished(gateway.url, invoke(gateway.url, "reach", reach, prefab_id="hostile"))
            state_dir = str(workdir / "state")
            inputs = {"redis_port": redis_server.port, "needle": PASSWORD, "state_dir": state_dir}
            snooping = {**inputs, "other_workspace": str(workdir / "state" / "work" / "unknown")}
            seen = _finished(gateway.url, invoke(gateway.url, "snoop", snooping, prefab_id="hostile"))
        finally:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    assert health["isolation"] == "partial", health
    assert any("bubblewrap" in reason for reason in health["workers"][0]["isolation"]["missing"])
    assert offline["status"] == "finished", offline
    assert all(not attempt["ok"] for attempt in offline["output"].values()), offline["output"]
    assert seen["status"] == "finished", seen
    report = seen["output"]
    assert report["uid"] >= Settings().runner_uid_base and report["readable_environs"] == []
    assert not report["needle_seen"] and _refused(report["list_state"]) and _refused(report["list_work"])


def test_without_a_mount_view_a_worker_refuses_folders_its_runners_cannot_pass(tmp_path: Path, redis_url: str) -> None:
    """As root without bubblewrap the runners walk the machine's own folders: a state folder under a
    folder closed to other users would fail every job at its first step, so the worker does not start
    and says which folder is closed and what to do about it."""
    if os.getuid() != 0:
        pytest.skip("runners have users of their own only when the factory runs as root")
    workdir = Path(tempfile.mkdtemp(prefix="factory-closed-"))  # pytest's own folders are closed as a whole
    workdir.chmod(0o711)
    closed = workdir / "closed"
    closed.mkdir()
    closed.chmod(0o700)
    env = {name: value for name, value in os.environ.items() if not name.startswith("FACTORY_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "FACTORY_STATE_DIR": str(closed / "state"),
            "FACTORY_PREFABS": str(tmp_path / "no-folders"),
            "FACTORY_BWRAP_PATH": str(tmp_path / "no-bwrap"),
            "FACTORY_PREFAB_PYTHON": SYSTEM_PYTHON,
            "FACTORY_LOG_JSON": "false",
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert f"{closed} is mode 0700" in said and f"chmod o+x {closed}" in said, said
    assert "Traceback" not in said, said


def test_sandbox_off_is_reported_as_off() -> None:
    isolation = probe(Settings(sandbox="off"))
    assert isolation.level == "off" and warning(isolation) is not None


PIDS_MAIN = """
import os


def pids():
    return {"pid": os.getpid(), "visible": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
"""


def test_pid_namespace_shows_a_runner_only_its_own_processes(tmp_path: Path) -> None:
    """FACTORY_RUNNER_PID_NAMESPACE: the runner (started directly, no stack) sees its own processes alone."""
    settings = Settings(state_dir=tmp_path / "state", runner_pid_namespace=True)
    isolation = probe(settings)
    if isolation.bwrap is None:
        pytest.skip("needs bubblewrap")
    code = tmp_path / "code"
    (code / "src").mkdir(parents=True)
    (code / "src" / "__init__.py").write_text("")
    (code / "src" / "main.py").write_text(PIDS_MAIN)
    tmp_path.chmod(0o755)
    spec = runner_spec(
        settings,
        isolation,
        key="pids",
        prefab_id="pids",
        python=Path(sys.executable),
        code_dir=str(code),
        memory_bytes=0,
    )
    workspace = settings.state_dir / "work" / "job"
    workspace.mkdir(parents=True)
    if spec.uid >= 0:
        os.chown(workspace, spec.uid, spec.gid)
    runner = Runner.start(spec, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    try:
        runner.send({"op": "run", "function": "pids", "inputs": {}, "env": {}, "cwd": str(workspace)})
        message = runner.recv(60)
    finally:
        runner.kill()
    assert message is not None and message[:1] == b"R", message
    seen = json.loads(message[1:])
    assert seen["pid"] < 10 and max(seen["visible"]) < 10, seen  # bubblewrap's init, the runner, nothing else


def test_state_folder_inside_a_read_only_mount_is_hidden(tmp_path: Path) -> None:
    """A folder deployment holding the state folder (a repository with .factory in it) does not expose it."""
    code, state = tmp_path / "repo", tmp_path / "repo" / ".factory"
    (state / "work").mkdir(parents=True)
    plan = MountPlan(Path(sys.executable), str(code), state, Path(__file__), 1024 * 1024)
    args = mount_args(plan)
    hidden = args.index("--tmpfs", args.index("--ro-bind", args.index(str(code)) - 1))
    assert args[hidden + 1] == str(state)  # an empty tmpfs over the state folder, after the code's mount
    assert args.index(str(state / "work")) > hidden  # then the workspaces alone, writable


def test_outputs_are_opened_without_following_a_link_anywhere_on_their_path(tmp_path: Path) -> None:
    """A prefab's process may still run while the worker (root) collects its outputs: a folder of
    data/outputs swapped for a link to elsewhere after the listing must not lead the open there."""
    from worker.workspace import open_beneath

    workspace = tmp_path / "job"
    outputs = workspace / "data" / "outputs"
    (outputs / "report").mkdir(parents=True)
    (outputs / "report" / "out.txt").write_text("mine")
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "out.txt").write_text("the machine's")

    fd = open_beneath(workspace, Path("data/outputs/report/out.txt"))
    with os.fdopen(fd) as opened:
        assert opened.read() == "mine"

    shutil.rmtree(outputs / "report")
    (outputs / "report").symlink_to(secret)  # the swap, between the listing and the open
    with pytest.raises(OSError):
        open_beneath(workspace, Path("data/outputs/report/out.txt"))
    (outputs / "link.txt").symlink_to(secret / "out.txt")
    with pytest.raises(OSError):
        open_beneath(workspace, Path("data/outputs/link.txt"))
    shutil.rmtree(workspace / "data")
    (workspace / "data").symlink_to(tmp_path)  # higher up too
    with pytest.raises(OSError):
        open_beneath(workspace, Path("data/elsewhere/out.txt"))
    (workspace / "pipe").parent.mkdir(exist_ok=True)
    os.mkfifo(workspace / "pipe")
    with pytest.raises(OSError):  # refused, not waited on
        open_beneath(workspace, Path("pipe"))
