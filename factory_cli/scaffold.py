"""``factory new``: a new prefab folder in the seed's layout, ready to serve and to test.

The files are templates (``string.Template``: ``$name`` placeholders, so the Python and JSON
braces need no escaping). The generated prefab passes ``factory validate`` and its own tests.
"""

import json
from pathlib import Path
from string import Template

from pydantic import ValidationError

from factory.errors import ManifestError
from factory.manifest import MANIFEST_NAME, Manifest

FUNCTION_NAME = "stream_text"

_MAIN_PY = '''"""$title prefab.

- ``stream_text``: streams the words of a text back as ``content`` events, with ``progress``.

Every streaming function is a synchronous generator that yields events shaped
``{"type": "start" | "progress" | "content" | "done" | "error", "data": ...}``;
an ``error`` event also carries an ``error_code``.
"""

import time
from collections.abc import Iterator
from typing import Any

# Pause between words (simulated work, so the stream is visible live).
WORD_DELAY_S = 0.05


def stream_text(text: str, repeat: int = 1) -> Iterator[dict[str, Any]]:
    """Stream the words of a text back one by one.

    Args:
        text: the text to stream.
        repeat: how many times to stream it (at least 1).

    Yields:
        dict: SSE event data - start, a content and a progress event per word, done.
    """
    try:
        if repeat < 1:
            raise ValueError(f"repeat must be at least 1, got {repeat}")
        words = text.split() * repeat
        total = len(words)
        yield {"type": "start", "data": {"total": total, "message": f"streaming {total} words"}}
        for i, word in enumerate(words, 1):
            yield {"type": "content", "data": word if i == total else word + " "}
            yield {
                "type": "progress",
                "data": {"current": i, "total": total, "percentage": int(i / total * 100)},
            }
            time.sleep(WORD_DELAY_S)
        yield {"type": "done", "data": {"words": total, "text": " ".join(words)}}
    except Exception as e:
        yield {"type": "error", "data": str(e), "error_code": "PROCESSING_ERROR"}
'''

_TEST_MAIN_PY = '''"""Unit tests for src/main.py: every function is called directly."""

from typing import Any

import pytest

from main import stream_text

Event = dict[str, Any]


@pytest.fixture(autouse=True)
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("main.WORD_DELAY_S", 0)


def check_stream(events: list[Event]) -> None:
    """Start first, done last, data everywhere, current <= total."""
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "done"
    for event in events:
        assert "data" in event
        if event["type"] == "progress":
            assert event["data"]["current"] <= event["data"]["total"]


def test_stream_text() -> None:
    result = list(stream_text("hello streaming world"))
    check_stream(result)
    assert result[0]["data"]["total"] == 3
    content = "".join(e["data"] for e in result if e["type"] == "content")
    assert content == "hello streaming world"
    progress = [e["data"] for e in result if e["type"] == "progress"]
    assert [p["percentage"] for p in progress] == [33, 66, 100]
    assert result[-1]["data"] == {"words": 3, "text": "hello streaming world"}


def test_stream_text_repeat() -> None:
    result = list(stream_text("a b", repeat=2))
    assert result[-1]["data"]["text"] == "a b a b"


def test_stream_text_empty() -> None:
    result = list(stream_text(""))
    assert [e["type"] for e in result] == ["start", "done"]
    assert result[-1]["data"]["words"] == 0


def test_stream_text_bad_repeat() -> None:
    result = list(stream_text("a", repeat=0))
    assert [e["type"] for e in result] == ["error"]
    assert result[0]["error_code"] == "PROCESSING_ERROR"
'''

_CONFTEST_PY = '''"""Make ``src/main.py`` importable as ``main`` when running ``pytest tests``."""

import sys
from pathlib import Path

SRC_DIR = str(Path(__file__).resolve().parent.parent / "src")
if SRC_DIR not in sys.path:
    sys.path.insert(0, SRC_DIR)
'''

_PYPROJECT = """[project]
name = "$name"
version = "0.1.0"
description = "$title: a prefab"
readme = "README.md"
requires-python = ">=3.11"
keywords = ["prefab", "streaming", "sse"]

# Runtime dependencies (packaged with the prefab)
dependencies = []

# Development dependencies (`uv sync --dev`; not packaged)
[dependency-groups]
dev = [
    "pytest>=7.4",
]

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["src"]

[tool.hatch.build.targets.wheel.force-include]
"prefab-manifest.json" = "prefab-manifest.json"

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.ruff]
line-length = 110
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "UP", "B", "N", "T201", "RUF"]

[tool.mypy]
strict = true
"""

_README = """# $name

$title: a prefab with one streaming function.

| Function | Streaming | What it does |
|----------|-----------|--------------|
| `stream_text(text, repeat=1)` | yes | Streams the words of `text` back as `content` events, with `progress`. |

Errors end the stream with an `error` event whose `error_code` is `PROCESSING_ERROR`.

## Development

```bash
uv sync --dev
uv run pytest
```

## Serving it

```bash
factory validate $folder          # manifest against src/main.py
factory up --prefabs $folder      # or drop the folder into prefabs/
factory invoke stream_text --prefab $name --input text="hello world"
```
"""


def _manifest(name: str, title: str) -> dict[str, object]:
    return {
        "id": name,
        "version": "0.1.0",
        "name": title,
        "description": f"{title}: streams a text back word by word.",
        "tags": ["streaming"],
        "functions": [
            {
                "name": FUNCTION_NAME,
                "description": "Stream the words of a text back one by one, with progress.",
                "streaming": True,
                "parameters": [
                    {"name": "text", "description": "The text to stream.", "type": "string", "required": True},
                    {
                        "name": "repeat",
                        "description": "How many times to stream it (at least 1).",
                        "type": "integer",
                        "required": False,
                        "default": 1,
                    },
                ],
                "returns": {
                    "type": "object",
                    "description": "SSE event stream: start {total, message}, content (a word) and progress "
                    "{current, total, percentage} per word, done {words, text}; error with error_code "
                    "PROCESSING_ERROR.",
                },
            }
        ],
    }


def create_prefab(name: str, parent: Path) -> Path:
    """Write the new prefab ``parent/name`` and return its folder; raises ManifestError for a bad or taken name."""
    title = name.replace("-", " ").replace("_", " ").strip().title() or name
    manifest = _manifest(name, title)
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise ManifestError(f"cannot name a prefab {name!r}: {exc.errors()[0]['msg']}") from exc
    folder = parent / name
    if folder.exists():
        raise ManifestError(f"{folder} already exists")
    values = {"name": name, "title": title, "folder": str(folder)}
    files = {
        MANIFEST_NAME: json.dumps(manifest, indent=2) + "\n",
        "src/main.py": _MAIN_PY,
        "tests/test_main.py": _TEST_MAIN_PY,
        "tests/conftest.py": _CONFTEST_PY,
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
    }
    for relative, template in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values) if "$" in template else template, encoding="utf-8")
    return folder
