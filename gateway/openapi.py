"""The OpenAPI document, typed per function, and ``/docs`` served offline.

FastAPI describes ``POST /invoke`` with the generic :class:`InvokeBody`. This module replaces that
body with one schema per loaded function, generated from its manifest (parameters with their
types, enums, defaults and required marks; file groups with their counts), joined as a ``oneOf``
with a discriminator on ``function_name`` when every name is unique, so a generated client is
typed. The document is built on first request and again after :func:`use_catalog` is called
with a new catalog (the deploy path calls it when prefabs change).

Swagger UI's files come from the ``swagger-ui-bundle-v2`` wheel and are served under
``/docs/assets``: ``/docs`` works with no network. Like FastAPI's own docs, ``/docs``, its assets
and ``/openapi.json`` are plain routes outside the API's auth (they hold no data).
"""

import re
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from factory.deployed import DeployedCatalog
from factory.manifest import FunctionSpec, Manifest, Parameter, Schema
from gateway.schemas import MAX_RETRIES

DOCS_ASSETS = "/docs/assets"
_COMPONENT_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _value_schema(spec: Parameter | Schema) -> dict[str, Any]:
    """JSON Schema of one parameter (or nested schema), exactly as strict as factory.validation."""
    schema: dict[str, Any] = {}
    if spec.type is not None:
        schema["type"] = "string" if spec.type in ("InputFile", "OutputFile") else spec.type
    if spec.description:
        schema["description"] = spec.description
    if spec.enum is not None:
        schema["enum"] = spec.enum
    if spec.items is not None:
        schema["items"] = _value_schema(spec.items)
    if spec.properties:
        schema["properties"] = {name: _value_schema(sub) for name, sub in spec.properties.items()}
        if isinstance(spec, Schema) and isinstance(spec.required, list):
            schema["required"] = spec.required
    if isinstance(spec, Parameter) and spec.default is not None:
        schema["default"] = spec.default
    return schema


def inputs_schema(function: FunctionSpec) -> dict[str, Any]:
    """The object a call's ``inputs`` must be: declared names only, required ones required."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {p.name: _value_schema(p) for p in function.parameters},
        "additionalProperties": False,
    }
    required = [p.name for p in function.parameters if p.required]
    if required:
        schema["required"] = required
    return schema


def _files_schema(function: FunctionSpec) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for name, group in function.input_groups().items():
        refs: dict[str, Any] = {
            "type": "array",
            "items": {"type": "string", "description": "upload://<file_id> (POST /files), http(s):// or s3:// URL"},
        }
        if group.description:
            refs["description"] = group.description
        if group.min_items is not None:
            refs["minItems"] = group.min_items
        if group.max_items is not None:
            refs["maxItems"] = group.max_items
        groups[name] = refs
    schema: dict[str, Any] = {"type": "object", "properties": groups, "additionalProperties": False}
    required = [name for name, group in function.input_groups().items() if group.min_items]
    if required:
        schema["required"] = required
    return schema


def call_schema(manifest: Manifest, function: FunctionSpec, versions: list[str] | None = None) -> dict[str, Any]:
    """The body of ``POST /invoke`` calling this function (of ``manifest``'s version, the default one)."""
    inputs = inputs_schema(function)
    properties: dict[str, Any] = {
        "prefab_id": {"type": "string", "enum": [manifest.id]},
        "function_name": {"type": "string", "enum": [function.name]},
        "version": {
            "anyOf": [{"type": "string", "enum": versions or [manifest.version]}, {"type": "null"}],
            "description": "the version to run (default: the newest ready one)",
        },
        "inputs": {"anyOf": [inputs, {"type": "null"}]},
        "parameters": {"anyOf": [inputs, {"type": "null"}], "description": "the ecosystem's name for inputs"},
        "files": _files_schema(function),
        "retries": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}, {"type": "null"}]},
    }
    required = ["function_name"]
    if function.input_groups() and any(group.min_items for group in function.input_groups().values()):
        required.append("files")
    return {
        "title": f"{manifest.id} {function.name}",
        "description": function.description or f"call {function.name} of {manifest.id} {manifest.version}",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def component_name(manifest: Manifest, function: FunctionSpec) -> str:
    return _COMPONENT_UNSAFE.sub("_", f"Call.{manifest.id}.{function.name}")


def _typed_invoke(document: dict[str, Any], catalog: DeployedCatalog) -> None:
    """Replace ``POST /invoke``'s generic body with the union of every deployed function's (each
    prefab's default version's functions, with the versions a call may name)."""
    calls = []
    versions: dict[str, list[str]] = {}
    for prefab_id, deployments in catalog.by_prefab.items():
        manifest = (catalog.newest_ready(prefab_id) or deployments[0]).manifest
        versions[prefab_id] = [d.version for d in deployments]
        calls += [(manifest, function) for function in manifest.functions]
    invoke = document.get("paths", {}).get("/invoke", {}).get("post")
    if not calls or invoke is None:
        return
    components = document.setdefault("components", {}).setdefault("schemas", {})
    refs = {}
    for manifest, function in calls:
        name = component_name(manifest, function)
        components[name] = call_schema(manifest, function, versions[manifest.id])
        refs[(manifest.id, function.name)] = f"#/components/schemas/{name}"
    names = [function.name for _, function in calls]
    body: dict[str, Any]
    if len(set(names)) == len(names):
        mapping = {function_name: ref for (_, function_name), ref in refs.items()}
        body = {"oneOf": [{"$ref": ref} for ref in refs.values()]}
        body["discriminator"] = {"propertyName": "function_name", "mapping": mapping}
    else:  # two prefabs share a function name: prefab_id tells them apart, no discriminator can
        body = {"anyOf": [{"$ref": ref} for ref in refs.values()]}
    invoke["requestBody"]["content"]["application/json"]["schema"] = body


def use_catalog(app: FastAPI, catalog: DeployedCatalog) -> None:
    """Describe ``catalog``'s functions from now on: the document is rebuilt on its next request."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _typed_invoke(document, catalog)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the wheel's files, nothing fetched from elsewhere."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.ico",
        )

    app.add_route("/docs", docs, include_in_schema=False)
