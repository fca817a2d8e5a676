"""Deploying prefabs as the ecosystem ships them: real wheels (hatchling through uv), one uv
environment per version, runners in those environments, versions side by side, live.

Every test runs real gateways and workers over a real Redis; wheels are built from folders laid
out as the ecosystem's template lays them out, and installed by uv into environments of their own.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from factory.registry import prune_retired, read_all, register_folders, undeploy
from factory.settings import Settings
from factory.webhooks import SIGNATURE_HEADER, webhook_signature
from tests.prefab_kit import build, deploy, function, make_prefab, wait_deployed
from tests.prefab_wheels import build_package_wheels
from tests.stack import ENV_DIR, Stack, deployment_of, events_url, invoke, read_events, runner_pids, wait_status
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.churn

VERSION_MAIN = '''
import importlib.metadata

def which() -> dict:
    """The version of pinned-thing this prefab's environment holds, and the prefab's own."""
    import pinned_thing
    return {"thing": pinned_thing.VERSION, "dist": importlib.metadata.version("pinned-thing")}
'''

HELPERS_MAIN = """
from helpers import NAME

def who() -> dict:
    return {"helpers": NAME}
"""

RUNNER_MAIN = """
import os
import sys
import time
from typing import Any, Iterator

def where() -> dict:
    return {"pid": os.getpid(), "executable": sys.executable, "prefix": sys.prefix, "version": "VERSION"}

def slow(count: int) -> Iterator[dict[str, Any]]:
    yield {"type": "start", "data": {"pid": os.getpid()}}
    for i in range(count):
        time.sleep(0.05)
        yield {"type": "progress", "data": {"current": i + 1, "total": count}}
    yield {"type": "done", "data": {"version": "VERSION"}}

def hog(megabytes: int) -> dict:
    blocks = [bytearray(1024 * 1024) for _ in range(megabytes)]
    return {"allocated": len(blocks)}
"""
RUNNER_FUNCTIONS = [
    function("where"),
    function("slow", streaming=True, parameters=[{"name": "count", "type": "integer", "required": True}]),
    function("hog", parameters=[{"name": "megabytes", "type": "integer", "required": True}]),
]


def _pinned_thing_wheels(out: Path) -> Path:
    """Two versions of a tiny pure-Python package as wheels in a local folder (``--find-links``)."""
    build_package_wheels(out / "wheels", "pinned-thing", ("1.0", "2.0"), out)
    return out / "wheels"


def _deployed(stack_url: str, wheel: Path, prefab_id: str, version: str) -> dict[str, Any]:
    response = deploy(stack_url, wheel, prefab_id, version)
    assert response.status_code == 202, response.text
    return wait_deployed(stack_url, response.json()["deployment_id"])


def _result(gateway_url: str, function_name: str, inputs: dict[str, Any], **body: Any) -> dict[str, Any]:
    job_id = invoke(gateway_url, function_name, inputs, **body)
    job = wait_status(gateway_url, job_id, {"finished", "failed"}, timeout_s=120)
    assert job["status"] == "finished", job
    output: dict[str, Any] = job["output"]
    return output


def test_conflicting_pins_each_run_in_their_own_environment(make_stack: Stack, tmp_path: Path) -> None:
    links = _pinned_thing_wheels(tmp_path / "links")
    make_stack.env.update({"UV_FIND_LINKS": str(links), "UV_NO_INDEX": "1"})
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    for prefab_id, pin in (("pins-one", "pinned-thing==1.0"), ("pins-two", "pinned-thing==2.0")):
        folder = make_prefab(tmp_path, prefab_id, "1.0.0", VERSION_MAIN, [function("which")], dependencies=(pin,))
        deployment = _deployed(gateway.url, build(folder, tmp_path / "dist"), prefab_id, "1.0.0")
        assert deployment["state"] == "ready", deployment
    assert _result(gateway.url, "which", {}, prefab_id="pins-one") == {"thing": "1.0", "dist": "1.0"}
    assert _result(gateway.url, "which", {}, prefab_id="pins-two") == {"thing": "2.0", "dist": "2.0"}


def test_same_named_sibling_modules_each_import_their_own(make_stack: Stack, tmp_path: Path) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    for prefab_id in ("siblings-a", "siblings-b"):
        folder = make_prefab(
            tmp_path,
            prefab_id,
            "1.0.0",
            HELPERS_MAIN,
            [function("who")],
            modules={"helpers.py": f'NAME = "{prefab_id}"\n'},
        )
        assert _deployed(gateway.url, build(folder, tmp_path / "dist"), prefab_id, "1.0.0")["state"] == "ready"
    assert _result(gateway.url, "who", {}, prefab_id="siblings-a") == {"helpers": "siblings-a"}
    assert _result(gateway.url, "who", {}, prefab_id="siblings-b") == {"helpers": "siblings-b"}


def test_deploy_signature_missing_wrong_and_valid(make_stack: Stack, tmp_path: Path) -> None:
    gateway = make_stack.start_gateway(FACTORY_DEPLOY_SECRET="s3cret")
    make_stack.start_worker(FACTORY_DEPLOY_SECRET="s3cret")
    folder = make_prefab(tmp_path, "signed", "1.0.0", RUNNER_MAIN, RUNNER_FUNCTIONS)
    wheel = build(folder, tmp_path / "dist")
    assert deploy(gateway.url, wheel, "signed", "1.0.0").status_code == 401
    wrong = deploy(gateway.url, wheel, "signed", "1.0.0", secret="not-the-secret")
    assert wrong.status_code == 403
    mismatched = deploy(gateway.url, wheel, "signed", "2.0.0", secret="s3cret")  # fields must match the wheel
    assert mismatched.status_code == 422
    valid = deploy(gateway.url, wheel, "signed", "1.0.0", secret="s3cret")
    assert valid.status_code == 202, valid.text
    assert wait_deployed(gateway.url, valid.json()["deployment_id"])["state"] == "ready"


def _failed_deployment(gateway_url: str, wheel: Path, prefab_id: str) -> tuple[dict[str, Any], list[Any]]:
    response = deploy(gateway_url, wheel, prefab_id, "1.0.0")
    assert response.status_code == 202, response.text
    deployment = wait_deployed(gateway_url, response.json()["deployment_id"])
    status, events = read_events(f"{gateway_url}/v1/deployments/{deployment['deployment_id']}/events")
    assert status == 200
    return deployment, events


def test_failed_deployments_say_why_and_refuse_calls(make_stack: Stack, tmp_path: Path) -> None:
    make_stack.env.update({"UV_NO_INDEX": "1"})  # nothing resolves but what is local
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    unresolvable = make_prefab(
        tmp_path, "needs-missing", "1.0.0", RUNNER_MAIN, RUNNER_FUNCTIONS, dependencies=("no-such-package-xyz==9.9",)
    )
    deployment, events = _failed_deployment(gateway.url, build(unresolvable, tmp_path / "dist"), "needs-missing")
    assert deployment["state"] == "failed"
    assert "no-such-package-xyz" in deployment["reason"]
    assert events[-1].event["error_code"] == "DEPLOYMENT_FAILED"
    assert "no-such-package-xyz" in events[-1].event["data"]

    broken = make_prefab(
        tmp_path, "import-error", "1.0.0", "import not_a_module_anywhere\n" + RUNNER_MAIN, RUNNER_FUNCTIONS
    )
    deployment, events = _failed_deployment(gateway.url, build(broken, tmp_path / "dist"), "import-error")
    assert deployment["state"] == "failed"
    assert "ModuleNotFoundError" in deployment["reason"] and "not_a_module_anywhere" in deployment["reason"]
    assert "importing" in [e.event["data"].get("step") for e in events if e.type == "progress"]

    # Static check passes (a generator in the source), the imported object is a plain function.
    disguised = make_prefab(
        tmp_path,
        "disguised",
        "1.0.0",
        "def listify(fn):\n    def wrapper(**kw):\n        return list(fn(**kw))\n    return wrapper\n\n"
        "@listify\ndef stream(count: int):\n    yield {'type': 'done', 'data': count}\n",
        [function("stream", streaming=True, parameters=[{"name": "count", "type": "integer", "required": True}])],
    )
    deployment, _ = _failed_deployment(gateway.url, build(disguised, tmp_path / "dist"), "disguised")
    assert deployment["state"] == "failed"
    assert "streaming is true but it is not a generator" in deployment["reason"]

    refused = httpx.post(f"{gateway.url}/invoke", json={"prefab_id": "import-error", "function_name": "where"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "PREFAB_UNAVAILABLE"
    assert "not_a_module_anywhere" in refused.json()["error"]["message"]
    prefabs = {p["id"]: p for p in httpx.get(f"{gateway.url}/prefabs").json()["prefabs"]}
    assert prefabs["import-error"]["status"] == "failed"
    assert "not_a_module_anywhere" in prefabs["import-error"]["versions"][0]["reason"]
    # factory validate: the source matches its manifest, but the running factory says it failed.
    validated = subprocess.run(
        [sys.executable, "-m", "factory_cli", "validate", str(broken), "--url", gateway.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert validated.returncode == 1
    assert "FAILED" in validated.stdout and "not_a_module_anywhere" in validated.stdout


def test_manifest_that_lies_about_its_code_is_refused_at_deploy(make_stack: Stack, tmp_path: Path) -> None:
    gateway = make_stack.start_gateway()
    lying = make_prefab(
        tmp_path, "lying", "1.0.0", "def greet(name: str) -> dict:\n    return {}\n", [function("absent")]
    )
    response = deploy(gateway.url, build(lying, tmp_path / "dist"), "lying", "1.0.0")
    assert response.status_code == 422
    assert "absent" in response.json()["detail"]["message"]  # the ecosystem's error shape under /v1


def test_versions_side_by_side_live_pinned_and_retired(make_stack: Stack, tmp_path: Path) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    wheels = {}
    for version in ("1.0.0", "2.0.0"):
        main = RUNNER_MAIN.replace("VERSION", version)
        wheels[version] = build(make_prefab(tmp_path, "sided", version, main, RUNNER_FUNCTIONS), tmp_path / "dist")
    # Deployed while the worker runs: served without a restart.
    first = _deployed(gateway.url, wheels["1.0.0"], "sided", "1.0.0")
    assert _result(gateway.url, "where", {}, prefab_id="sided")["version"] == "1.0.0"
    # A long job on 1.0.0, then 2.0.0 deployed and 1.0.0 retired under it: the job ends on 1.0.0.
    long_job = invoke(gateway.url, "slow", {"count": 40}, prefab_id="sided", version="1.0.0")
    _deployed(gateway.url, wheels["2.0.0"], "sided", "2.0.0")
    assert httpx.delete(f"{gateway.url}/v1/deployments/{first['deployment_id']}").json()["state"] == "retired"
    _, events = read_events(events_url(gateway, long_job))
    assert events[-1].event == {"type": "done", "data": {"version": "1.0.0"}}
    # Newest ready by default; a retired version is unknown to new calls.
    assert _result(gateway.url, "where", {}, prefab_id="sided")["version"] == "2.0.0"
    assert _result(gateway.url, "where", {}, prefab_id="sided", version="2.0.0")["version"] == "2.0.0"
    gone = httpx.post(
        f"{gateway.url}/invoke", json={"prefab_id": "sided", "function_name": "where", "version": "1.0.0"}
    )
    assert gone.status_code == 404
    listed = {p["id"]: p for p in httpx.get(f"{gateway.url}/prefabs").json()["prefabs"]}["sided"]
    assert [(v["version"], v["state"]) for v in listed["versions"]] == [("2.0.0", "ready")]


def test_code_runs_in_the_prefab_environment_and_a_killed_runner_is_replaced(make_stack: Stack, tmp_path: Path) -> None:
    gateway = make_stack.start_gateway()
    worker = make_stack.start_worker()
    wheel = build(make_prefab(tmp_path, "isolated", "1.0.0", RUNNER_MAIN, RUNNER_FUNCTIONS), tmp_path / "dist")
    _deployed(gateway.url, wheel, "isolated", "1.0.0")
    where = _result(gateway.url, "where", {}, prefab_id="isolated")
    assert where["prefix"] != sys.prefix and where["prefix"].startswith(str(ENV_DIR))  # its own environment
    assert where["pid"] not in {p.popen.pid for p in make_stack.procs}
    job_id = invoke(gateway.url, "slow", {"count": 200}, prefab_id="isolated")
    _, head = read_events(events_url(gateway, job_id), limit=2)
    (runner,) = runner_pids(worker, where["executable"])  # its pid out here (inside, its pid namespace's)
    os.kill(runner, signal.SIGKILL)
    _, events = read_events(events_url(gateway, job_id))
    assert events[-1].type == "error" and events[-1].event["error_code"] == "WORKER_LOST"
    assert "killed by SIGKILL" in events[-1].event["data"]
    _result(gateway.url, "where", {}, prefab_id="isolated")
    assert runner_pids(worker, where["executable"]) not in ([], [runner])  # a new runner serves the next job


EDITABLE_MAIN = """
def which() -> dict:
    return {{"code": "{mark}"}}
"""


def test_a_served_folder_prefab_runs_its_edited_code_without_a_restart(make_stack: Stack, tmp_path: Path) -> None:
    """In development a worker serves a prefab folder in place: once its code changes, a job after the
    runner's next look at it (at most ``CODE_RECHECK_S`` apart) runs in a fresh runner with the new
    code, with no restart of anything."""
    folders = tmp_path / "prefabs"
    folder = make_prefab(folders, "editable", "1.0.0", EDITABLE_MAIN.format(mark="first"), [function("which")])
    make_stack.env["FACTORY_PREFABS"] = str(folders)
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    assert _result(gateway.url, "which", {}, prefab_id="editable") == {"code": "first"}
    main = folder / "src" / "main.py"
    main.write_text(EDITABLE_MAIN.format(mark="second"))
    later = time.time() + 2
    os.utime(main, (later, later))  # a newer stamp, also where file times are coarse
    deadline = time.monotonic() + 60
    while (seen := _result(gateway.url, "which", {}, prefab_id="editable")) != {"code": "second"}:
        assert seen == {"code": "first"} and time.monotonic() < deadline, seen
        time.sleep(0.2)


def test_memory_limit_ends_the_job_and_the_runner_is_replaced(make_stack: Stack, tmp_path: Path) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    folder = make_prefab(
        tmp_path, "bounded", "1.0.0", RUNNER_MAIN, RUNNER_FUNCTIONS, execution_environment={"memory": "256Mi"}
    )
    _deployed(gateway.url, build(folder, tmp_path / "dist"), "bounded", "1.0.0")
    assert _result(gateway.url, "hog", {"megabytes": 16}, prefab_id="bounded") == {"allocated": 16}
    job_id = invoke(gateway.url, "hog", {"megabytes": 1024}, prefab_id="bounded")
    job = wait_status(gateway.url, job_id, {"finished", "failed"}, timeout_s=120)
    assert job["status"] == "failed" and job["error"]["code"] == "RESOURCE_EXHAUSTED", job
    assert _result(gateway.url, "hog", {"megabytes": 16}, prefab_id="bounded") == {"allocated": 16}


def test_a_worker_with_an_empty_cache_builds_on_first_job(make_stack: Stack, tmp_path: Path) -> None:
    make_stack.env["FACTORY_STORAGE_URL"] = str(tmp_path / "shared-storage")  # S3, or a shared volume
    gateway = make_stack.start_gateway()
    first = make_stack.start_worker()
    wheel = build(make_prefab(tmp_path, "travelling", "1.0.0", RUNNER_MAIN, RUNNER_FUNCTIONS), tmp_path / "dist")
    _deployed(gateway.url, wheel, "travelling", "1.0.0")
    first.stop()
    empty_cache = tmp_path / "other-machine-envs"
    make_stack.start_worker(FACTORY_ENV_DIR=str(empty_cache), FACTORY_STATE_DIR=str(tmp_path / "other-state"))
    assert _result(gateway.url, "where", {}, prefab_id="travelling")["prefix"].startswith(str(empty_cache))


def test_no_worker_for_a_prefab_is_refused_and_dedicated_workers_serve_theirs(
    make_stack: Stack, tmp_path: Path
) -> None:
    gateway = make_stack.start_gateway(FACTORY_QUEUE_WITHOUT_WORKER="false")
    refused = httpx.post(f"{gateway.url}/invoke", json={"function_name": "counter", "inputs": {"count": 1}})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "NO_WORKER"
    assert refused.headers["Retry-After"]
    make_stack.start_worker(FACTORY_SERVE_PREFABS="streaming-examples")
    deadline = time.monotonic() + 30
    while True:  # the gateway reads the workers' announcements at most once a second
        served = httpx.post(f"{gateway.url}/invoke", json={"function_name": "word_count", "inputs": {"text": "a b"}})
        if served.status_code == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert served.status_code == 202, served.text
    still_refused = httpx.post(f"{gateway.url}/invoke", json={"function_name": "counter", "inputs": {"count": 1}})
    assert still_refused.status_code == 503 and still_refused.json()["error"]["code"] == "NO_WORKER"


@pytest.mark.parametrize("folder_has_pyproject", [True, False])
def test_factory_deploy_builds_a_folder_and_follows_it(
    make_stack: Stack, tmp_path: Path, folder_has_pyproject: bool
) -> None:
    gateway = make_stack.start_gateway()
    make_stack.start_worker()
    folder = make_prefab(tmp_path, "from-cli", "1.0.0", RUNNER_MAIN, RUNNER_FUNCTIONS)
    if not folder_has_pyproject:
        (folder / "pyproject.toml").unlink()
        (folder / "src" / "__init__.py").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "factory_cli", "deploy", str(folder), "--url", gateway.url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "importing the prefab" in done.stderr and "ready" in done.stderr
    assert _result(gateway.url, "where", {}, prefab_id="from-cli")["version"] == "VERSION"
    undone = subprocess.run(
        [sys.executable, "-m", "factory_cli", "undeploy", "from-cli@1.0.0", "--url", gateway.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert undone.returncode == 0, undone.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "factory_cli", "undeploy", "from-cli@1.0.0", "--url", gateway.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 3


def test_deployment_webhooks_are_signed_and_carry_the_manifest(make_stack: Stack, tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        receiver.statuses = [503]  # the first delivery fails: it is retried with the same event_id
        make_stack.env.update(
            {"FACTORY_DEPLOY_WEBHOOK_URL": receiver.url, "FACTORY_DEPLOY_WEBHOOK_SECRET": "hook-secret"}
        )
        gateway = make_stack.start_gateway()
        make_stack.start_worker()
        wheel = build(make_prefab(tmp_path, "hooked", "1.0.0", RUNNER_MAIN, RUNNER_FUNCTIONS), tmp_path / "dist")
        deployment = _deployed(gateway.url, wheel, "hooked", "1.0.0")
        deadline = time.monotonic() + 60
        while True:
            events = [json.loads(body) for _, body in receiver.received]
            hooked = [e for e in events if e.get("prefab_id") == "hooked"]
            if any(e["event"] == "deployment.success" for e in hooked) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    for headers, body in receiver.received:
        assert headers[SIGNATURE_HEADER] == webhook_signature("hook-secret", body)
    kinds = [e["event"] for e in hooked]
    assert kinds[-1] == "deployment.success" and "deployment.started" in kinds
    started = [e for e in hooked if e["event"] == "deployment.started"]
    assert len({e["event_id"] for e in started}) == 1  # a retried delivery keeps its event_id
    success = hooked[-1]
    assert success["deployment_id"] == deployment["deployment_id"] and success["manifest"]["id"] == "hooked"


def test_retired_deployments_leave_the_catalog_after_the_retention(redis_url: str, settings: Settings) -> None:
    client = redis.Redis.from_url(redis_url)
    register_folders(client, settings)
    retired = undeploy(client, deployment_of(client, "behaviours").deployment_id)
    assert prune_retired(client, retention_s=3600) == 0  # retired moments ago: kept for its queued jobs
    assert prune_retired(client, retention_s=0) == 1
    assert retired.deployment_id not in read_all(client)
    assert {d.prefab_id for d in read_all(client).values()} == {"streaming-examples"}
