"""Fuzz the gateway from its own OpenAPI document with schemathesis, over a real socket.

Each operation gets a bounded number of generated calls, valid and invalid. Whatever it sends,
the gateway never answers 5xx, every error is the contract's shape (CONTRACT §3), and every
answer matches the documented schema. No worker runs: jobs stay queued, and short keep-alive,
idle and sync-wait settings make every SSE stream and seed call end within a second or so.
"""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from factory_cli.embedded_redis import EmbeddedRedis
from gateway.auth import ECOSYSTEM_PREFIXES
from tests.conftest import _db_url
from tests.shapes import ecosystem_error_problem, error_shape_problem
from tests.stack import Gateway, Stack

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 150
REQUEST_TIMEOUT_S = 10


@schemathesis.check
def error_shape(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx and 5xx body is ``{"error": {"code", "message", "details"?}}`` (the ecosystem's
    ``{"detail": {"error_code", "message", ...}}`` on its routes) and leaks no traceback."""
    if response.status_code < 400:
        return
    check = ecosystem_error_problem if case.path.startswith(ECOSYSTEM_PREFIXES) else error_shape_problem
    problem = check(response.status_code, response.headers.get("content-type", [""])[0], response.content)
    if problem is not None:
        raise AssertionError(problem)


CHECKS: list[Any] = [
    not_a_server_error,
    error_shape,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzzed_gateway(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    stack = Stack(_db_url(redis_server), tmp_path_factory.mktemp("fuzz"))
    gateway = stack.start_gateway(
        FACTORY_KEEPALIVE_S="0.3",
        FACTORY_IDLE_READER_TIMEOUT_S="1",
        FACTORY_SYNC_WAIT_S="0.5",
    )
    yield gateway
    stack.stop()


@pytest.fixture(scope="module")
def gateway_schema(fuzzed_gateway: Gateway) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_gateway.url}/openapi.json", timeout=REQUEST_TIMEOUT_S)


def _fuzz(operation: Any, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_gateway_survives_fuzzing(gateway_schema: Any, mode: GenerationMode) -> None:
    """Every documented operation, in turn; the report names each one that failed and why."""
    failures: dict[str, str] = {}
    operations = [result.ok() for result in gateway_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        try:
            _fuzz(operation, mode)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to negate: free-form strings only
        except Exception as exc:  # collect them all, so one run reports every finding
            failures[operation.label] = str(exc)
    assert not failures, "\n\n".join(f"{label}:\n{message}" for label, message in failures.items())


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def typed_value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a manifest parameter (or nested schema) accepts."""
    kind = schema.get("type")
    if schema.get("enum"):
        return st.sampled_from(schema["enum"])
    if kind == "string":
        return st.text(max_size=30)
    if kind == "integer":
        return st.integers()
    if kind == "number":
        return st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(typed_value(schema["items"]) if schema.get("items") else JSON_VALUES, max_size=4)
    if kind == "object":
        properties = schema.get("properties") or {}
        return st.fixed_dictionaries({}, optional={name: typed_value(sub) for name, sub in properties.items()})
    return JSON_VALUES


def valid_inputs(function: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    params = function.get("parameters", [])
    required = {p["name"]: typed_value(p) for p in params if p.get("required")}
    optional = {p["name"]: typed_value(p) for p in params if not p.get("required")}
    return st.fixed_dictionaries(required, optional=optional)


def any_inputs(function: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    names = [p["name"] for p in function.get("parameters", [])] + ["unknown", "__class__"]
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=8), JSON_VALUES | st.text(), max_size=6)


def test_inputs_fuzzed_against_each_manifest(fuzzed_gateway: Gateway) -> None:
    """Inputs the manifest accepts are enqueued (202); anything else is a 422 naming fields under ``inputs``."""
    functions: list[tuple[str, dict[str, Any]]] = []
    with httpx.Client(base_url=fuzzed_gateway.url, timeout=REQUEST_TIMEOUT_S) as client:
        for summary in client.get("/prefabs").json()["prefabs"]:
            if summary["status"] in ("ready", "building"):
                manifest = client.get(f"/prefabs/{summary['id']}").json()
                functions.extend((manifest["id"], function) for function in manifest["functions"])

        @given(target=st.sampled_from(functions), data=st.data())
        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(target: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
            prefab_id, function = target
            needs_files = any((g or {}).get("minItems") for g in (function.get("files") or {}).values())
            valid = not needs_files and data.draw(st.booleans(), label="valid")
            inputs = data.draw(valid_inputs(function) if valid else any_inputs(function), label="inputs")
            body = {"prefab_id": prefab_id, "function_name": function["name"], "inputs": inputs}
            response = client.post("/invoke", json=body)
            if valid:
                assert response.status_code == 202, response.text
                return
            assert response.status_code in (202, 422), response.text
            if response.status_code == 422:
                error = response.json()["error"]
                assert error["code"] == "VALIDATION_ERROR" and error["details"], error
                assert all(d["field"].startswith(("inputs.", "files.")) for d in error["details"]), error

        run()
