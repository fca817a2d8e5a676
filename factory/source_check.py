"""Static check of a prefab's ``src/main.py`` against its manifest, without importing it.

The gateway must never run prefab code, yet it must refuse a prefab whose manifest lies about
its functions; reading the source's syntax tree tells enough: whether each declared function
exists, is a generator (sync or async) or a plain function, and which parameters it takes.
The worker runs the same check before it imports the module.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

from factory.manifest import FunctionSpec, Manifest

_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


@dataclass(frozen=True)
class FunctionShape:
    """What the source says about one top-level function."""

    name: str
    is_async: bool
    is_generator: bool
    params: tuple[str, ...]
    required: frozenset[str]
    accepts_any_keyword: bool


def _yields(node: ast.AST) -> bool:
    """Whether the function body yields, ignoring nested functions and classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _NESTED_SCOPES):
            continue
        if isinstance(child, ast.Yield | ast.YieldFrom) or _yields(child):
            return True
    return False


def _shape(node: ast.FunctionDef | ast.AsyncFunctionDef) -> FunctionShape:
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    required = {a.arg for a in positional[:first_default]}
    required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
    return FunctionShape(
        name=node.name,
        is_async=isinstance(node, ast.AsyncFunctionDef),
        is_generator=any(_yields(stmt) for stmt in node.body),
        params=tuple(a.arg for a in [*args.args, *args.kwonlyargs]),
        required=frozenset(required),
        accepts_any_keyword=args.kwarg is not None,
    )


def read_shapes(source: bytes | str, filename: str = "src/main.py") -> dict[str, FunctionShape]:
    """Top-level functions of a module's source; raises ``SyntaxError``/``ValueError`` as parsing does."""
    tree = ast.parse(source, filename=filename)
    return {node.name: _shape(node) for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def function_problems(spec: FunctionSpec, shape: FunctionShape | None) -> list[str]:
    """Why a declared function does not match its source (empty when it does)."""
    if shape is None:
        return [f"function {spec.name!r} is declared but not defined at the top of src/main.py"]
    problems: list[str] = []
    if spec.streaming and not shape.is_generator:
        problems.append(f"{spec.name}: streaming is true but it is not a generator function")
    if not spec.streaming and shape.is_generator:
        problems.append(f"{spec.name}: it is a generator function but streaming is false")
    declared = {p.name for p in spec.parameters}
    unknown = sorted(declared - set(shape.params)) if not shape.accepts_any_keyword else []
    if unknown:
        problems.append(f"{spec.name}: declared parameters not in its signature: {', '.join(unknown)}")
    undeclared = sorted(shape.required - declared)
    if undeclared:
        problems.append(f"{spec.name}: required arguments not declared in the manifest: {', '.join(undeclared)}")
    return problems


def source_problems(manifest: Manifest, source: bytes | str) -> list[str]:
    """Every mismatch between a manifest and the text of its ``src/main.py``."""
    try:
        shapes = read_shapes(source)
    except (SyntaxError, ValueError) as exc:
        return [f"cannot be parsed: {exc}"]
    problems: list[str] = []
    for spec in manifest.functions:
        problems.extend(function_problems(spec, shapes.get(spec.name)))
    return problems


def manifest_problems(manifest: Manifest, source_path: Path) -> list[str]:
    """Every mismatch between a manifest and its ``src/main.py`` file (messages without the path)."""
    try:
        source = source_path.read_bytes()
    except FileNotFoundError:
        return ["file not found"]
    return source_problems(manifest, source)
