"""Check a call's inputs against the manifest before anything is enqueued.

Pure functions: the gateway calls them with the parsed body and gets back the inputs with
defaults filled in, or a :class:`ValidationFailed` naming every bad field.
"""

from typing import Any

from factory.errors import ValidationFailed
from factory.filerefs import parse_ref
from factory.manifest import FunctionSpec, Parameter, Schema

Problem = dict[str, str]

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "InputFile": (str,),
    "OutputFile": (str,),
}


def _type_problem(value: Any, expected: str | None, where: str) -> Problem | None:
    if expected is None:
        return None
    allowed = _PY_TYPES[expected]
    is_bool = isinstance(value, bool)
    ok = isinstance(value, allowed) and (expected == "boolean" or not is_bool)
    if ok:
        return None
    return {"field": where, "message": f"expected {expected}, got {_json_type(value)}"}


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check(value: Any, schema: Schema | Parameter, where: str) -> list[Problem]:
    problem = _type_problem(value, schema.type, where)
    if problem:
        return [problem]
    problems: list[Problem] = []
    if schema.enum is not None and value not in schema.enum:
        allowed = ", ".join(repr(v) for v in schema.enum)
        problems.append({"field": where, "message": f"must be one of {allowed}"})
    if isinstance(value, list) and schema.items is not None:
        for index, item in enumerate(value):
            problems.extend(_check(item, schema.items, f"{where}[{index}]"))
    if isinstance(value, dict) and schema.properties:
        required = schema.required if isinstance(schema, Schema) and isinstance(schema.required, list) else []
        for name in required:
            if name not in value:
                problems.append({"field": f"{where}.{name}", "message": "field required"})
        for name, sub in schema.properties.items():
            if name in value:
                problems.extend(_check(value[name], sub, f"{where}.{name}"))
    return problems


def validate_inputs(spec: FunctionSpec, inputs: dict[str, Any]) -> dict[str, Any]:
    """Return the inputs with defaults filled in, or raise naming every bad field."""
    problems: list[Problem] = []
    declared = {p.name: p for p in spec.parameters}
    for name in inputs:
        if name not in declared:
            problems.append({"field": f"inputs.{name}", "message": "unknown parameter"})
    resolved: dict[str, Any] = {}
    for name, param in declared.items():
        where = f"inputs.{name}"
        if name in inputs:
            problems.extend(_check(inputs[name], param, where))
            resolved[name] = inputs[name]
        elif param.required:
            problems.append({"field": where, "message": "field required"})
        elif param.default is not None:
            resolved[name] = param.default
    if problems:
        raise ValidationFailed(f"inputs do not match {spec.name}", details=problems)
    return resolved


def validate_file_groups(spec: FunctionSpec, files: dict[str, list[str]]) -> None:
    """Check a call's ``files`` against the function's input file groups."""
    problems: list[Problem] = []
    groups = spec.input_groups()
    for name in files:
        if name not in groups:
            problems.append({"field": f"files.{name}", "message": "unknown file group"})
    for name, group in groups.items():
        count = len(files.get(name, []))
        if group.min_items is not None and count < group.min_items:
            problems.append({"field": f"files.{name}", "message": f"needs at least {group.min_items} file(s)"})
        if group.max_items is not None and count > group.max_items:
            problems.append({"field": f"files.{name}", "message": f"takes at most {group.max_items} file(s)"})
    for name, refs in files.items():
        for index, ref in enumerate(refs):
            try:
                parse_ref(ref)
            except ValueError as exc:
                problems.append({"field": f"files.{name}[{index}]", "message": str(exc)})
    if problems:
        raise ValidationFailed(f"files do not match {spec.name}", details=problems)
