"""The packages keep their layers (README, "Architecture"): the tools (``factory_cli``) above the
services (``gateway``, ``worker``) and the caller SDK (``factory_client``), all above the core
(``factory``). import-linter checks the imports against the contract in pyproject.toml; the second
test checks that no module reaches a package it may not import by writing its name as a string."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.stack import ROOT

# Each package, and the packages it may not name (the layers above it, and its siblings).
FORBIDDEN = {
    "factory": ("gateway", "worker", "factory_cli", "factory_client"),
    "gateway": ("worker", "factory_cli", "factory_client"),
    "worker": ("gateway", "factory_cli", "factory_client"),
    "factory_client": ("gateway", "worker", "factory_cli"),
}


def test_imports_follow_the_layers() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout, result.stdout


def _named_modules(tree: ast.AST, packages: tuple[str, ...]) -> list[str]:
    """String constants that are a dotted path into ``packages`` (``"worker.tasks.run"``), and
    ``"-m", "<package>"`` pairs of a command line."""
    dotted = re.compile(rf"({'|'.join(packages)})(\.[A-Za-z_]\w*)+")
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and dotted.fullmatch(node.value):
            found.append(node.value)
        if isinstance(node, ast.List | ast.Tuple):
            values = [item.value if isinstance(item, ast.Constant) else None for item in node.elts]
            for flag, module in zip(values, values[1:], strict=False):
                if flag == "-m" and isinstance(module, str) and module.split(".")[0] in packages:
                    found.append(f"-m {module}")
    return found


def test_no_module_names_a_package_it_may_not_import() -> None:
    offences = {}
    for package, packages in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            if named := _named_modules(ast.parse(path.read_text(), str(path)), packages):
                offences[str(path.relative_to(ROOT))] = named
    assert offences == {}


def test_the_check_finds_a_module_named_as_a_string() -> None:
    """The check above can fail: it sees both ways of naming a module in a string."""
    tree = ast.parse('TASK = "worker.tasks.run_invocation"\nCOMMAND = [python, "-m", "gateway"]\n')
    assert _named_modules(tree, ("gateway", "worker")) == ["worker.tasks.run_invocation", "-m gateway"]
