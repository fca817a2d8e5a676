"""The store's ownership, checked on the source: one module imports ``rq``, one holds the Lua, each
script says what it takes, and the record fields the code writes are the store's named ones."""

import ast
import re
from pathlib import Path

from factory.events import ErrorInfo
from factory.jobs import JobRecord, JobStatus, terminal_fields
from factory.store import fields, scripts
from factory.store.eventlog import retry_fields, started_fields

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("factory", "worker", "gateway")
SCRIPTS = ROOT / "factory" / "store" / "scripts.py"
# The job statistics' Lua functions are generated from the histogram's buckets beside them.
LUA_FRAGMENTS = {ROOT / "factory" / "jobstats.py"}


def sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_the_store_imports_rq() -> None:
    importers = {
        path.relative_to(ROOT).as_posix()
        for path in sources()
        if any(name == "rq" or name.startswith("rq.") for name in imported_modules(path))
    }
    assert importers == {"factory/store/rqview.py"}


def test_every_lua_script_lives_in_the_scripts_module() -> None:
    holders = {path for path in sources() if "redis.call(" in path.read_text()}
    assert holders == {SCRIPTS, *LUA_FRAGMENTS}


def test_every_script_names_its_keys_and_arguments() -> None:
    text = SCRIPTS.read_text()
    names = [name for name in dir(scripts) if name.endswith("_LUA")]
    expected = {"APPEND_LUA", "CLAIM_LUA", "TAKE_LUA", "END_RQ_JOB_LUA", "RECORD_FILES_LUA", "RQ_WORKER_BEAT_LUA"}
    assert expected <= set(names)
    for name in names:
        header = re.search(rf"((?:^#.*\n)+){name} = ", text, re.M)
        assert header is not None, f"{name} has no header comment"
        assert "KEYS[1]" in header.group(1) and "ARGV[1]" in header.group(1), f"{name}'s header names no KEYS/ARGV"


def test_the_record_fields_written_are_the_stores() -> None:
    named = {value for key, value in vars(fields).items() if key.isupper() and isinstance(value, str)}
    error = ErrorInfo(code="X", message="y")
    written = {*terminal_fields(JobStatus.FAILED, 1, None, error), *started_fields("w"), *retry_fields("t", 2)}
    assert written <= named
    assert set(fields.BOOKKEEPING).isdisjoint(JobRecord.model_fields)  # from_hash ignores them
