"""The OpenAPI document types each function's call from its manifest, follows catalog changes, and
/docs works offline (Swagger UI's files served by the gateway itself)."""

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from factory.deployed import DeployedCatalog
from factory.manifest import load_manifest
from factory.registry import folder_deployment
from factory.settings import Settings
from gateway import openapi
from gateway.app import create_app


@pytest.fixture
def client(settings: Settings) -> Any:
    app = create_app(settings)
    with TestClient(app) as client:
        client.app_ref = app  # type: ignore[attr-defined]
        yield client


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema["$ref"]
    return dict(document["components"]["schemas"][ref.rsplit("/", 1)[1]])


def _invoke_body(document: dict[str, Any]) -> dict[str, Any]:
    return dict(document["paths"]["/invoke"]["post"]["requestBody"]["content"]["application/json"]["schema"])


def _validator(document: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of POST /invoke's body, resolving the document's own $refs."""
    schema = {**_invoke_body(document), "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_each_function_has_a_typed_call_schema(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    body = _invoke_body(document)
    mapping = body["discriminator"]["mapping"]
    assert body["discriminator"]["propertyName"] == "function_name"
    assert {"batch_process", "word_count", "process_large_file", "typed", "chatty"} <= set(mapping)
    assert len(body["oneOf"]) == len(mapping)

    batch = _resolved(document, {"$ref": mapping["batch_process"]})
    assert batch["properties"]["function_name"] == {"type": "string", "enum": ["batch_process"]}
    assert batch["properties"]["prefab_id"]["enum"] == ["streaming-examples"]
    inputs = batch["properties"]["inputs"]["anyOf"][0]
    assert inputs["required"] == ["items"] and inputs["additionalProperties"] is False
    assert inputs["properties"]["items"]["type"] == "array"

    typed = _resolved(document, {"$ref": mapping["typed"]})["properties"]["inputs"]["anyOf"][0]
    assert typed["properties"]["mode"]["enum"] == ["fast", "slow"]
    assert typed["properties"]["mode"]["default"] == "fast"
    assert typed["properties"]["flag"]["type"] == "boolean"
    assert typed["properties"]["options"]["type"] == "object"

    large = _resolved(document, {"$ref": mapping["process_large_file"]})
    assert large["required"] == ["function_name", "files"]
    assert large["properties"]["files"]["properties"]["input"]["maxItems"] == 1


def test_the_schema_accepts_what_the_gateway_accepts_and_refuses_the_rest(client: TestClient) -> None:
    validator = _validator(client.get("/openapi.json").json())
    good = {"function_name": "batch_process", "inputs": {"items": ["a", 1]}}
    assert list(validator.iter_errors(good)) == []
    assert client.post("/invoke", json=good).status_code == 202
    for bad in (
        {"function_name": "batch_process", "inputs": {}},  # items required
        {"function_name": "batch_process", "inputs": {"items": "a"}},  # not an array
        {"function_name": "batch_process", "inputs": {"items": [], "extra": 1}},  # unknown parameter
        {"function_name": "typed", "inputs": {"text": "t", "mode": "medium"}},  # not in the enum
        {"function_name": "no_such_function"},
    ):
        assert list(validator.iter_errors(bad)), bad
        assert client.post("/invoke", json=bad).status_code in (404, 422), bad


def test_responses_are_typed(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]

    def ok_schema(path: str, method: str = "get") -> dict[str, Any]:
        return dict(paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"])

    assert ok_schema("/prefabs/{prefab_id}")["$ref"].endswith("/Manifest")
    assert ok_schema("/prefabs")["$ref"].endswith("/PrefabList")
    assert ok_schema("/jobs")["$ref"].endswith("/JobList")
    assert ok_schema("/jobs/{job_id}")["$ref"].endswith("/JobView")
    assert ok_schema("/stats")["$ref"].endswith("/Stats")
    manifest = client.get("/prefabs/streaming-examples").json()
    assert manifest["id"] == "streaming-examples" and "null" not in json.dumps(manifest)
    jsonschema.validate(manifest, {**document["components"]["schemas"]["Manifest"], **document})


def test_the_document_follows_the_catalog(client: TestClient, tmp_path: Path) -> None:
    assert "shout" not in _invoke_body(client.get("/openapi.json").json())["discriminator"]["mapping"]
    folder = tmp_path / "loud"
    (folder / "src").mkdir(parents=True)
    manifest = {
        "id": "loud",
        "version": "2.0.0",
        "functions": [
            {"name": "shout", "parameters": [{"name": "text", "type": "string", "required": True}]},
        ],
    }
    (folder / "prefab-manifest.json").write_text(json.dumps(manifest))
    (folder / "src" / "main.py").write_text("def shout(text):\n    return text.upper()\n")
    deployment = folder_deployment(folder, load_manifest(folder), None)
    catalog = DeployedCatalog.build({deployment.deployment_id: deployment})
    openapi.use_catalog(client.app_ref, catalog)  # type: ignore[attr-defined]
    mapping = _invoke_body(client.get("/openapi.json").json())["discriminator"]["mapping"]
    assert list(mapping) == ["shout"]


def test_docs_work_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
    assert urls, page.text
    for url in urls:
        assert not url.startswith(("http:", "https:", "//")), url  # nothing from another host
        assert client.get(url).status_code == 200, url
    script = client.get(f"{openapi.DOCS_ASSETS}/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
