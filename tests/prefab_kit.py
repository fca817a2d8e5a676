"""Prefabs made in a test, laid out as the ecosystem's template lays them out, built into real wheels.

``make_prefab`` writes a folder (``prefab-manifest.json``, ``pyproject.toml`` packaging ``src`` with
hatchling and the manifest at the wheel's root, ``src/__init__.py``, ``src/main.py``, any sibling
modules); ``build`` turns it into a wheel with the factory's own builder (uv + hatchling);
``deploy`` sends a wheel to a gateway's ``POST /v1/deploy`` and ``wait_deployed`` follows it to its end.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx

from factory.wheels import build_wheel, deploy_signature, template_pyproject


def function(name: str, *, streaming: bool = False, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} (a test function)",
        "streaming": streaming,
        "parameters": parameters or [],
        "returns": {"type": "object"},
    }


def make_prefab(
    root: Path,
    prefab_id: str,
    version: str,
    main: str,
    functions: list[dict[str, Any]],
    *,
    dependencies: tuple[str, ...] = (),
    modules: dict[str, str] | None = None,
    execution_environment: dict[str, Any] | None = None,
) -> Path:
    folder = root / f"{prefab_id}-{version}"
    (folder / "src").mkdir(parents=True)
    manifest: dict[str, Any] = {
        "id": prefab_id,
        "version": version,
        "name": prefab_id,
        "description": "a prefab made by a test",
        "tags": ["test"],
        "functions": functions,
    }
    if execution_environment:
        manifest["execution_environment"] = execution_environment
    (folder / "prefab-manifest.json").write_text(json.dumps(manifest, indent=2))
    (folder / "pyproject.toml").write_text(template_pyproject(prefab_id, version, dependencies=dependencies))
    (folder / "src" / "__init__.py").write_text("")
    (folder / "src" / "main.py").write_text(main)
    for name, text in (modules or {}).items():
        (folder / "src" / name).write_text(text)
    return folder


def build(folder: Path, out: Path) -> Path:
    return build_wheel(folder, out)


def deploy(
    gateway_url: str,
    wheel: Path,
    prefab_id: str,
    version: str,
    *,
    secret: str | None = None,
    signature: str | None = None,
) -> httpx.Response:
    data = wheel.read_bytes()
    headers = {}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = deploy_signature(secret, prefab_id, version, hashlib.sha256(data).hexdigest())
    return httpx.post(
        f"{gateway_url}/v1/deploy",
        data={"prefab_id": prefab_id, "version": version},
        files={"whl_file": (wheel.name, data, "application/octet-stream")},
        headers=headers,
        timeout=60,
    )


def wait_deployed(gateway_url: str, deployment_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """The deployment once it is ready or failed (a build may download packages: a generous deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found: dict[str, Any] = httpx.get(f"{gateway_url}/v1/deployments/{deployment_id}", timeout=10).json()
        if found["state"] in ("ready", "failed"):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"deployment {deployment_id} stayed {found['state']}")
        time.sleep(0.1)
