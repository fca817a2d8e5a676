"""Loading prefabs: manifests checked against their source without importing it (no Redis)."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from factory.catalog import Catalog
from factory.errors import PrefabNotFound
from factory.settings import Settings
from gateway.app import create_app


def write_prefab(root: Path, prefab_id: str, source: str, functions: list[dict[str, Any]]) -> Path:
    folder = root / prefab_id
    (folder / "src").mkdir(parents=True)
    manifest = {"id": prefab_id, "version": "1.0.0", "functions": functions}
    (folder / "prefab-manifest.json").write_text(json.dumps(manifest))
    (folder / "src" / "main.py").write_text(source)
    return folder


GOOD = """
def stream(text: str, times: int = 2):
    yield {"type": "done", "data": text * times}

async def astream(n: int):
    yield {"type": "done", "data": n}

def plain(x: float) -> float:
    return x
"""


def fn(name: str, streaming: bool, *params: tuple[str, str, bool]) -> dict[str, Any]:
    return {
        "name": name,
        "streaming": streaming,
        "parameters": [{"name": p, "type": t, "required": r} for p, t, r in params],
    }


def test_a_matching_prefab_loads(tmp_path: Path) -> None:
    write_prefab(
        tmp_path,
        "good",
        GOOD,
        [
            fn("stream", True, ("text", "string", True), ("times", "integer", False)),
            fn("astream", True, ("n", "integer", True)),
            fn("plain", False, ("x", "number", True)),
        ],
    )
    catalog = Catalog.discover([tmp_path])
    assert [e.ok for e in catalog.entries] == [True]
    assert catalog.resolve(None, "astream").function.streaming


@pytest.mark.parametrize(
    ("functions", "reason"),
    [
        ([fn("missing", True)], "'missing' is declared but not defined"),
        ([fn("plain", True, ("x", "number", True))], "streaming is true but it is not a generator"),
        ([fn("stream", False, ("text", "string", True))], "generator function but streaming is false"),
        ([fn("stream", True, ("text", "string", True), ("other", "string", False))], "not in its signature: other"),
        ([fn("stream", True)], "required arguments not declared in the manifest: text"),
    ],
)
def test_a_mismatch_marks_the_prefab_broken_with_its_reason(
    tmp_path: Path, functions: list[dict[str, Any]], reason: str
) -> None:
    write_prefab(tmp_path, "bad", GOOD, functions)
    write_prefab(tmp_path, "fine", GOOD, [fn("plain", False, ("x", "number", True))])
    catalog = Catalog.discover([tmp_path])
    bad, fine = catalog.entries
    assert not bad.ok and reason in " ".join(bad.problems)
    assert str(bad.path / "src" / "main.py") in bad.problems[0]
    assert fine.ok  # the others still load
    with pytest.raises(PrefabNotFound):
        catalog.get("bad")


def test_unparsable_source_and_bad_manifest_are_broken(tmp_path: Path) -> None:
    write_prefab(tmp_path, "syntax", "def broken(:\n", [fn("broken", False)])
    folder = tmp_path / "manifest"
    folder.mkdir()
    (folder / "prefab-manifest.json").write_text('{"id": "../escape", "functions": []}')
    entries = {e.path.name: e for e in Catalog.discover([tmp_path]).entries}
    assert "cannot be parsed" in entries["syntax"].problems[0]
    problems = " ".join(entries["manifest"].problems)
    assert "version" in problems and "prefab id" in problems


def test_the_same_id_twice_keeps_the_first(tmp_path: Path) -> None:
    write_prefab(tmp_path / "a", "twin", GOOD, [fn("plain", False, ("x", "number", True))])
    write_prefab(tmp_path / "b", "twin", GOOD, [fn("plain", False, ("x", "number", True))])
    catalog = Catalog.discover([tmp_path / "a", tmp_path / "b"])
    assert [e.ok for e in catalog.entries] == [True, False]
    assert "already served" in catalog.entries[1].problems[0]


def test_broken_prefabs_are_listed_as_broken_by_the_gateway(tmp_path: Path, redis_url: str) -> None:
    write_prefab(tmp_path, "bad", GOOD, [fn("plain", True, ("x", "number", True))])
    write_prefab(tmp_path, "good", GOOD, [fn("plain", False, ("x", "number", True))])
    settings = Settings(redis_url=redis_url, prefabs=[tmp_path], state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as client:
        listed = {p["id"]: p for p in client.get("/prefabs").json()["prefabs"]}
        assert listed["bad"]["status"] == "broken" and "not a generator" in listed["bad"]["problems"][0]
        assert listed["good"]["status"] == "building"  # deployed in place; no worker has built it yet
        assert client.get("/prefabs/bad").status_code == 404
        response = client.post("/invoke", json={"prefab_id": "bad", "function_name": "plain", "inputs": {"x": 1}})
        assert response.status_code == 404
        assert client.get("/prefabs/good").json()["functions"][0]["name"] == "plain"
