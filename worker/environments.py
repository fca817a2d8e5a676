"""One virtual environment per prefab version, built with uv and cached by content hash.

Every prefab wheel installs a top-level package named ``src``, so each prefab version gets an
environment of its own: ``uv venv`` with the factory's interpreter, then ``uv pip install`` of the
wheel (its ``Requires-Dist``, pinned by the folder's ``uv.lock`` when there was one). The key is a
hash of the wheel, the pins and the interpreter, so a redeploy of the same wheel or a restart
builds nothing.

Layout under ``root``::

    <key>/                        a finished environment
    <key>/factory-environment.json  the marker, written last
    .building-<key>-<random>/     an environment being built, renamed to <key> when installed
    .locks/<key>.lock             flock'd while a key is built or removed (never deleted)

Invariant: a ``<key>`` folder holding the marker is complete and usable; nothing else is ever
handed out. Builders of one key on one machine serialise on its lock file, so several worker
processes build it once. uv's output reaches the caller verbatim when a build fails.
"""

import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.uvrun import child_environment, index_arguments, index_environment, run_uv

logger = logging.getLogger(__name__)

MARKER = "factory-environment.json"
LOCKS = ".locks"
BUILDING = ".building-"
TRASH = ".trash-"
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_RESOLVED = re.compile(r"^Resolved (\d+) packages?\b")
_INSTALLED = re.compile(r"^Installed (\d+) packages?\b")
_ADDED = re.compile(r"^ \+ (\S+)")
LOCK_POLL_S = 0.1

StepCallback = Callable[[str, dict[str, Any]], None]


class EnvironmentBuildError(Exception):
    """An environment could not be built; ``output`` is uv's output verbatim (the resolver's error included)."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.message = message
        self.output = output


@dataclass(frozen=True)
class Environment:
    """A finished environment: where it is and the interpreter that runs the prefab in it."""

    key: str
    path: Path
    python: Path


def python_tag() -> str:
    """This interpreter's implementation, major.minor and platform: what an environment is only good for."""
    impl = sys.implementation.name
    return f"{impl}-{sys.version_info.major}.{sys.version_info.minor}-{sys.platform}-{platform.machine()}"


def environment_key(wheel_sha256: str, requirements: str | None, *, python: str | None = None) -> str:
    """The cache key of the environment for this wheel and these pins on this interpreter (or ``python``'s tag)."""
    digest = hashlib.sha256()
    for part in ("factory-environment/1", wheel_sha256, requirements or "", python or python_tag()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:40]


def _error_text(output: str) -> str:
    """uv's error, from its first ``error:`` line on (or its last lines when it printed none)."""
    lines = output.strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            return "\n".join(lines[i:])
    return "\n".join(lines[-10:])


class _Build:
    """Turns uv's output lines into steps as they stream, and keeps what was installed."""

    def __init__(self, on_step: StepCallback) -> None:
        self.on_step = on_step
        self.installed = 0
        self.added: list[str] = []

    def line(self, text: str) -> None:
        if match := _RESOLVED.match(text):
            self.on_step("installing", {"packages": int(match.group(1))})
        elif match := _INSTALLED.match(text):
            self.installed = int(match.group(1))
        elif match := _ADDED.match(text):
            self.added.append(match.group(1))


class Environments:
    """The environments of one machine under ``root``: find, build once, sweep."""

    def __init__(
        self,
        root: Path,
        *,
        python: str = sys.executable,
        timeout_s: float = 900.0,
        index: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.python = python
        self.timeout_s = timeout_s
        self.index = dict(index_environment() if index is None else index)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / LOCKS).mkdir(exist_ok=True)

    def lock_path(self, key: str) -> Path:
        """The file whose flock is held while ``key`` is built or removed."""
        return self.root / LOCKS / f"{_checked(key)}.lock"

    def find(self, key: str) -> Environment | None:
        """The finished environment of ``key``, or None; finding one marks it as used now."""
        path = self.root / _checked(key)
        marker = path / MARKER
        python = path / "bin" / "python"
        if not (marker.is_file() and python.exists()):
            return None
        try:
            os.utime(marker)  # its mtime is the last use, which the sweeper reads
        except OSError:
            return None
        return Environment(key=key, path=path, python=python)

    def ensure(
        self,
        key: str,
        wheel: Path | None,
        requirements: str | None,
        on_step: StepCallback,
        packages: Sequence[str] = (),
    ) -> Environment:
        """The environment of ``key``, built from ``wheel`` and ``packages`` (requirement specs: a folder
        run in place has no wheel) with the pins ``requirements``, unless cached.

        ``wheel`` must keep its wheel file name (``name-version-tags.whl``): uv reads it. ``on_step``
        hears "cached", or "waiting" (another process builds the key), "creating", "resolving",
        "installing" ({"packages": N}) and "installed", as they happen.
        """
        found = self.find(key)
        if found is None:
            with self._locked(key, on_step):
                found = self.find(key)
                if found is None:
                    return self._build(key, wheel, requirements, on_step, packages)
        on_step("cached", {"key": key, "path": str(found.path)})
        return found

    @contextmanager
    def _locked(self, key: str, on_step: StepCallback) -> Iterator[None]:
        """Hold the key's lock; report "waiting" while another process builds it."""
        with open(self.lock_path(key), "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_step("waiting", {"key": key})
                self._wait_for_lock(handle.fileno(), key)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _wait_for_lock(self, fd: int, key: str) -> None:
        # The holder's own commands end by its timeout; a holder that dies releases the lock at once.
        deadline = time.monotonic() + 2 * self.timeout_s + 60.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvironmentBuildError(f"environment {key}: another process kept building it", "") from None
                time.sleep(LOCK_POLL_S)

    def _build(
        self, key: str, wheel: Path | None, requirements: str | None, on_step: StepCallback, packages: Sequence[str]
    ) -> Environment:
        self._clear_leftovers(key)
        final = self.root / key
        building = self.root / f"{BUILDING}{key}-{secrets.token_hex(4)}"
        started = time.monotonic()
        deadline = started + self.timeout_s
        try:
            on_step("creating", {"key": key, "python": self.python})
            self._run(["venv", "--relocatable", "--no-project", "--python", self.python, str(building)], deadline, None)
            build = _Build(on_step)
            if wheel is not None or packages:
                on_step("resolving", {"wheel": wheel.name if wheel else None, "requirements": list(packages)})
                self._run(self._install_args(building, wheel, requirements, packages), deadline, build.line)
            on_step("installed", {"packages": build.installed, "distributions": build.added})
            os.rename(building, final)
            _write_marker(final, key, wheel, self.python, build.added)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            if not (final / MARKER).is_file():
                shutil.rmtree(final, ignore_errors=True)
            raise
        finally:
            _pins_file(building).unlink(missing_ok=True)
        what = wheel.name if wheel is not None else ", ".join(packages) or "no packages"
        logger.info("environment %s for %s built in %.1f s", key, what, time.monotonic() - started)
        return Environment(key=key, path=final, python=final / "bin" / "python")

    def _install_args(
        self, building: Path, wheel: Path | None, requirements: str | None, packages: Sequence[str]
    ) -> list[str]:
        args = ["pip", "install", "--python", str(building / "bin" / "python"), "--compile-bytecode"]
        args += index_arguments(self.index)
        if requirements:
            # The lock's pins constrain what the wheel's Requires-Dist resolves to; the machine's own
            # constraints (UV_CONSTRAINT, which a -c flag would override) are kept beside them.
            pins = _pins_file(building)
            pins.write_text(requirements, encoding="utf-8")
            args += ["--constraint", str(pins)]
            for extra in self.index.get("UV_CONSTRAINT", "").split():
                args += ["--constraint", extra]
        if wheel is not None:
            args.append(str(wheel.resolve()))
        args += packages
        return args

    def _run(self, args: list[str], deadline: float, on_line: Callable[[str], None] | None) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EnvironmentBuildError(f"uv {args[0]}: timed out after {self.timeout_s:.0f} s", "")
        run = run_uv(args, env=child_environment(self.index), cwd=self.root, timeout_s=remaining, on_line=on_line)
        if run.timed_out:
            raise EnvironmentBuildError(f"uv {args[0]}: timed out after {self.timeout_s:.0f} s", run.output)
        if not run.ok:
            command = " ".join(args[:2]) if args[0] == "pip" else args[0]
            raise EnvironmentBuildError(f"uv {command} failed:\n{_error_text(run.output)}", run.output)

    def _clear_leftovers(self, key: str) -> None:
        """Under the key's lock: what a builder that died left (its folder, its pins, a final without marker)."""
        for leftover in self.root.glob(f"{BUILDING}{key}-*"):
            _remove(leftover)
        final = self.root / key
        if final.exists() and not (final / MARKER).is_file():
            _remove(final)

    def remove_unused(self, keep: set[str], older_than_s: float) -> list[str]:
        """Remove environments not in ``keep`` and unused for ``older_than_s``; return their keys.

        ``keep`` must hold every key a deployed version may still run in: an environment found
        without its lock (the cached path of :meth:`ensure`) is not protected otherwise. What
        builders that died left behind goes too, once that old.
        """
        removed: list[str] = []
        now = time.time()
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(TRASH):  # a removal that died half way: nobody can use it
                if now - entry.stat().st_mtime >= older_than_s:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            key = _key_of(entry.name)
            finished = not entry.name.startswith(".")
            if key is None or (finished and key in keep):
                continue
            if self._remove_if_idle(key, entry, now, older_than_s) and finished:
                removed.append(key)
                logger.info("removed unused environment %s", key)
        return removed

    def _remove_if_idle(self, key: str, entry: Path, now: float, older_than_s: float) -> bool:
        """Remove an environment (or a dead builder's leftover) unused for that long and not locked."""
        marker = entry / MARKER
        try:
            last_used = (marker if marker.is_file() else entry).stat().st_mtime
        except FileNotFoundError:
            return False
        if now - last_used < older_than_s:
            return False
        with open(self.lock_path(key), "a+b") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # being built or removed right now
            marker.unlink(missing_ok=True)  # no longer found from here on
            _remove(entry)
        return True


def _checked(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not an environment key: {key!r}")
    return key


def _key_of(name: str) -> str | None:
    """The key a folder under root belongs to (a finished or a half-built environment), else None."""
    if name.startswith(BUILDING):
        rest = name[len(BUILDING) :].removesuffix(".constraints.txt")
        key = rest.rsplit("-", 1)[0]
    elif name.startswith("."):
        return None
    else:
        key = name
    return key if _KEY.match(key) else None


def _remove(path: Path) -> None:
    """Remove a file or folder; a folder is renamed aside first so no reader sees it half deleted."""
    if path.is_dir() and not path.is_symlink():
        aside = path.with_name(f"{TRASH}{path.name}-{secrets.token_hex(4)}")
        try:
            os.rename(path, aside)
        except OSError:
            aside = path
        shutil.rmtree(aside, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _pins_file(building: Path) -> Path:
    return building.with_name(building.name + ".constraints.txt")


def _write_marker(final: Path, key: str, wheel: Path | None, python: str, distributions: list[str]) -> None:
    record = {"key": key, "wheel": wheel.name if wheel else None, "python": python, "distributions": distributions}
    fd, tmp = tempfile.mkstemp(dir=final, prefix=".marker-")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(record, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, final / MARKER)
