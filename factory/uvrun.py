"""Running uv for the factory: its binary, the package index to use, a clean child environment.

Both the wheel builder (``uv build``) and the worker's environments (``uv venv``, ``uv pip install``)
go through here, so they resolve against the same index as the factory's own environment.

Deliberate oddity: this module reads ``os.environ`` (and pip's config files) itself, like the
work horse's secret injection. The package index is not a factory setting: it is whatever the
machine's pip and uv are configured with, and it is handed on to uv unchanged in meaning.

- ``UV_INDEX_URL``, ``UV_DEFAULT_INDEX``, ``UV_EXTRA_INDEX_URL``, ``UV_INDEX``, ``UV_FIND_LINKS``
  and ``UV_INSECURE_HOST`` pass through; uv reads them itself.
- pip's settings (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``,
  ``PIP_TRUSTED_HOST``, ``PIP_CERT``, ``PIP_CONSTRAINT`` and the same keys of pip.conf, read as pip
  reads them) become the uv variables above, ``SSL_CERT_FILE`` and ``UV_CONSTRAINT``, wherever the
  uv equivalent is not set already.
- uv has no ``UV_NO_INDEX`` variable (it ignores one): ``UV_NO_INDEX`` (or pip's ``no-index``)
  stays in the returned mapping as our own marker and :func:`index_arguments` turns it into
  ``--no-index`` for the commands that resolve.
- pip's ``extra-index-url`` comes with ``UV_INDEX_STRATEGY=unsafe-best-match`` (unless set), so
  uv picks versions across the indexes as pip does instead of stopping at the first that knows
  the package.
- A local ``find-links`` entry that does not exist is dropped: uv fails on a missing directory
  where pip only warns.

The child environment holds only what uv needs (PATH, HOME, locale, temp dir, proxies,
certificates, uv's own cache/network knobs and the index), never the factory's credentials.
"""

import configparser
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from uv import find_uv_bin

NO_INDEX = "UV_NO_INDEX"

# Variables a uv child may see besides the index ones: locale, temp dir, proxies, certificates,
# and uv's own knobs about cache, network and config (never anything the factory itself reads).
_PASSTHROUGH = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS",
    "XDG_DATA_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NETRC",
    "UV_SYSTEM_CERTS",
    "UV_NATIVE_TLS",
    "UV_CACHE_DIR",
    "UV_NO_CACHE",
    "UV_OFFLINE",
    "UV_HTTP_TIMEOUT",
    "UV_HTTP_RETRIES",
    "UV_CONCURRENT_DOWNLOADS",
    "UV_CONCURRENT_BUILDS",
    "UV_CONCURRENT_INSTALLS",
    "UV_LINK_MODE",
    "UV_INDEX_STRATEGY",
    "UV_KEYRING_PROVIDER",
    "UV_PYTHON_INSTALL_DIR",
    "UV_PYTHON_DOWNLOADS",
    "UV_NO_CONFIG",
    "UV_CONFIG_FILE",
)
_UV_INDEX_VARS = (
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_FIND_LINKS",
    "UV_INSECURE_HOST",
    "UV_CONSTRAINT",
)
# Credentials of named indexes (UV_INDEX_<NAME>_USERNAME / _PASSWORD) belong to the index, not the factory.
_UV_INDEX_PREFIX = "UV_INDEX_"
_PIP_KEYS = ("index-url", "extra-index-url", "find-links", "no-index", "trusted-host", "cert", "constraint")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


def uv_binary() -> str:
    """The path of the uv binary the ``uv`` package installed beside this interpreter."""
    return find_uv_bin()


def pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's config files in the order pip loads them (later ones win), as pip finds them on Unix."""
    env_file = environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(os.pathsep) if d]
    files.append(Path("/etc/pip.conf"))
    if not (env_file and Path(env_file).exists()):
        home = Path(environ.get("HOME") or Path.home())
        files.append(home / ".pip" / "pip.conf")
        files.append(Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    files.append(Path(sys.prefix) / "pip.conf")
    if env_file:
        files.append(Path(env_file))
    return files


def pip_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """pip's effective index settings: config files ([global], then [install]) and PIP_* variables over them."""
    found: dict[str, str] = {}
    for path in pip_config_files(environ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue  # pip would refuse to start; the index then is uv's default
        for section in ("global", "install"):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    if key.replace("_", "-") in _PIP_KEYS:
                        found[key.replace("_", "-")] = value
    for key in _PIP_KEYS:
        from_env = environ.get("PIP_" + key.upper().replace("-", "_"))
        if from_env is not None:
            found[key] = from_env
    return found


def _local_path(location: str) -> Path | None:
    """The directory or file a find-links entry names on this machine, or None for a remote URL."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme:
        return Path(location).expanduser()
    return None


def _existing_links(locations: Sequence[str]) -> list[str]:
    kept = []
    for location in locations:
        local = _local_path(location)
        if local is None or local.exists():
            kept.append(location)
    return kept


def index_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The uv variables that select the package index this machine's pip and uv are configured with."""
    environ = os.environ if environ is None else environ
    pip = pip_settings(environ)
    env = {name: value for name, value in environ.items() if name in _UV_INDEX_VARS}
    env.update({n: v for n, v in environ.items() if n.startswith(_UV_INDEX_PREFIX) and n not in env})
    if "index-url" in pip and not {"UV_INDEX_URL", "UV_DEFAULT_INDEX"} & env.keys():
        env["UV_INDEX_URL"] = pip["index-url"].split()[0]
    if "extra-index-url" in pip and not {"UV_EXTRA_INDEX_URL", "UV_INDEX"} & env.keys():
        extras = _existing_links(pip["extra-index-url"].split())
        if extras:
            env["UV_EXTRA_INDEX_URL"] = " ".join(extras)
            # pip takes the best version across all its indexes; uv by default stops at the first
            # index that has the package at all, which would hide newer releases behind a partial mirror.
            if "UV_INDEX_STRATEGY" not in environ:
                env["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    links = env["UV_FIND_LINKS"].split(",") if "UV_FIND_LINKS" in env else pip.get("find-links", "").split()
    links = _existing_links([link.strip() for link in links if link.strip()])
    env.pop("UV_FIND_LINKS", None)
    if links:
        env["UV_FIND_LINKS"] = ",".join(links)
    if "trusted-host" in pip and "UV_INSECURE_HOST" not in env:
        env["UV_INSECURE_HOST"] = " ".join(pip["trusted-host"].split())
    if "constraint" in pip and "UV_CONSTRAINT" not in env:
        constraints = [c for c in pip["constraint"].split() if Path(c).expanduser().is_file()]
        if constraints:
            env["UV_CONSTRAINT"] = " ".join(constraints)
    if "cert" in pip and "SSL_CERT_FILE" not in environ and Path(pip["cert"]).expanduser().is_file():
        env["SSL_CERT_FILE"] = pip["cert"]
    if environ.get(NO_INDEX, "").lower() in _TRUE or pip.get("no-index", "").lower() in _TRUE:
        env[NO_INDEX] = "1"
    return env


def index_arguments(index_env: Mapping[str, str]) -> list[str]:
    """Flags for a resolving uv command that the index environment cannot say by itself."""
    return ["--no-index"] if index_env.get(NO_INDEX) == "1" else []


def child_environment(index_env: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a uv child: no REDIS_URL, FACTORY_* or cloud credentials."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in _PASSTHROUGH if name in environ}
    env.setdefault("PATH", os.defpath)
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")  # use the given interpreter, never fetch another
    env["UV_NO_PROGRESS"] = "1"
    env["NO_COLOR"] = "1"
    env.update({name: value for name, value in index_env.items() if name != NO_INDEX})
    return env


@dataclass(frozen=True)
class UvRun:
    """How one uv command ended: its exit code (None when killed at the deadline) and its output."""

    returncode: int | None
    output: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_uv(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> UvRun:
    """Run ``uv ARGS`` with stdout and stderr merged, handing each line to ``on_line`` as it comes."""
    expired = threading.Event()
    lines: list[str] = []
    with subprocess.Popen(
        [uv_binary(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,  # its own process group, so a kill also ends a build backend it started
    ) as proc:

        def kill() -> None:
            expired.set()
            _kill_group(proc)

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            returncode = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                _kill_group(proc)
    timed_out = expired.is_set()
    return UvRun(None if timed_out else returncode, "".join(lines), timed_out)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
