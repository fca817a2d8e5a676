"""Test prefab: each function shows one edge case the factory must handle."""

import asyncio
import hashlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any


def counter(count: int, delay_s: float = 0.0, payload: str = "") -> Iterator[dict[str, Any]]:
    yield {"type": "start", "data": {"total": count}}
    for i in range(1, count + 1):
        if delay_s:
            time.sleep(delay_s)
        yield {"type": "progress", "data": {"current": i, "total": count, "payload": payload}}
    yield {"type": "done", "data": {"count": count}}


def raises(message: str) -> Iterator[dict[str, Any]]:
    yield {"type": "start", "data": {}}
    raise RuntimeError(message)


def malformed(kind: str) -> Iterator[Any]:
    yield {"type": "start", "data": {}}
    if kind == "number":
        yield 42
    elif kind == "no_type":
        yield {"data": "no type"}
    else:
        yield {"type": "progress", "data": object()}
    yield {"type": "done", "data": {}}


def bare_strings(words: list[str]) -> Iterator[str]:
    yield from words


def no_done(count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {"type": "progress", "data": {"current": i + 1}}


def sleeper(seconds: float) -> Iterator[dict[str, Any]]:
    try:
        yield {"type": "start", "data": {"seconds": seconds}}
        time.sleep(seconds)
        yield {"type": "done", "data": {"slept": seconds}}
    except Exception as e:  # the seed's pattern: must not swallow the factory's timeout
        yield {"type": "error", "data": str(e), "error_code": "SWALLOWED"}


def needs_secret() -> Iterator[dict[str, Any]]:
    token = os.environ.get("BEHAVIOURS_TOKEN", "")
    yield {"type": "done", "data": {"has_token": bool(token), "length": len(token)}}


SNOOPED = ("BEHAVIOURS_TOKEN", "REDIS_URL", "FACTORY_API_KEYS", "FACTORY_TOKEN_SECRET", "AWS_SECRET_ACCESS_KEY")


def secret_snoop() -> dict[str, Any]:
    return {"visible": sorted(k for k in os.environ if k in SNOOPED)}


async def async_counter(count: int) -> AsyncIterator[dict[str, Any]]:
    for i in range(count):
        await asyncio.sleep(0)
        yield {"type": "progress", "data": {"current": i + 1}}
    yield {"type": "done", "data": {"count": count}}


async def async_add(a: float, b: float) -> float:
    await asyncio.sleep(0)
    return a + b


def workspace_report() -> dict[str, Any]:
    cwd = Path.cwd()
    return {
        "cwd": str(cwd),
        "inputs": (cwd / "data" / "inputs").is_dir(),
        "outputs": (cwd / "data" / "outputs").is_dir(),
    }


def die(after: int = 2) -> Iterator[dict[str, Any]]:
    for i in range(after):
        yield {"type": "progress", "data": {"current": i + 1}}
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)
    yield {"type": "done", "data": {}}


def flaky(marker: str, failures: int = 1) -> Iterator[dict[str, Any]]:
    path = Path(marker)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    yield {"type": "start", "data": {"attempt": attempt}}
    if attempt <= failures:
        raise RuntimeError(f"flaky failure on attempt {attempt}")
    yield {"type": "done", "data": {"attempt": attempt}}


def die_once(marker: str, after: int = 2) -> Iterator[dict[str, Any]]:
    path = Path(marker)
    first = not path.exists()
    path.touch()
    for i in range(after):
        yield {"type": "progress", "data": {"current": i + 1, "first": first}}
    if first:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    yield {"type": "done", "data": {"first": first}}


def typed(
    text: str,
    mode: str = "fast",
    ratio: float | None = None,
    count: int | None = None,
    flag: bool | None = None,
    tags: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {"text": text, "mode": mode, "ratio": ratio, "count": count, "flag": flag, "tags": tags, "options": options}


OUTPUTS = Path("data") / "outputs"


def write_outputs(names: list[str], text: str = "hello") -> dict[str, Any]:
    for name in names:
        path = OUTPUTS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return {"written": names}


def stream_outputs(count: int) -> Iterator[dict[str, Any]]:
    yield {"type": "start", "data": {"count": count}}
    for i in range(count):
        yield {"type": "progress", "data": {"current": i + 1}}
    (OUTPUTS / "count.txt").write_text(str(count), encoding="utf-8")
    yield {"type": "done", "data": {"count": count}}


def symlink_output() -> dict[str, Any]:
    (OUTPUTS / "passwd").symlink_to("/etc/passwd")
    return {"linked": True}


def list_inputs() -> Iterator[dict[str, Any]]:
    yield {"type": "start", "data": {}}
    inputs = Path("data") / "inputs"
    groups = {
        group.name: {f.name: f.read_bytes().decode("utf-8", errors="replace") for f in sorted(group.iterdir())}
        for group in sorted(inputs.iterdir())
    }
    yield {"type": "done", "data": groups}


def chatty(text: str) -> dict[str, Any]:
    print(f"printed {text}")  # noqa: T201 - a prefab's print output is what this function shows
    print(f"complained {text}", file=sys.stderr)  # noqa: T201
    logging.getLogger("behaviours").warning("logged %s", text)
    return {"text": text}


# This process's identity: its pid is a private one when the runner has a pid namespace of its own.
RUNNER_ID = uuid.uuid4().hex


def whoami() -> dict[str, Any]:
    return {"pid": os.getpid(), "runner": RUNNER_ID}


_LEFT: dict[str, str] = {}  # module state lives on from one job to the next of the same work horse


def leak_state(name: str) -> dict[str, Any]:
    sigterm = "ignored" if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN else "handled"
    seen = {"runner": RUNNER_ID, "env": os.environ.get(name), "module": _LEFT.get(name), "sigterm": sigterm}
    os.environ[name] = "left by an earlier job"
    _LEFT[name] = "left by an earlier job"
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    return seen


def stubborn(seconds: float) -> Iterator[dict[str, Any]]:
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # the factory's deadline can no longer stop it
    yield {"type": "start", "data": {"seconds": seconds}}
    time.sleep(seconds)
    yield {"type": "done", "data": {"slept": seconds}}


def secret_digest() -> dict[str, Any]:
    return {"sha256": hashlib.sha256(os.environ.get("BEHAVIOURS_KEY", "").encode()).hexdigest()}


def shout_file() -> dict[str, Any]:
    (source,) = sorted((Path("data") / "inputs" / "input").iterdir())
    text = source.read_text(encoding="utf-8").upper()
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    (OUTPUTS / f"shouted-{source.name}").write_text(text, encoding="utf-8")
    return {"name": source.name, "size": len(text)}
