"""How well this machine can isolate prefab runners: probed once per process, reported everywhere.

The sandbox (``worker.sandbox``, docs/security.md) is made of parts the machine may or may not
provide: a user per deployment needs root; a private mount view and an empty network namespace
need bubblewrap (``bwrap``) that works here (as root it needs no user namespaces; as another user
it does), and without bubblewrap root can still give a runner an empty network namespace itself.
:func:`probe` finds out which parts are in force; ``factory up`` warns loudly when any is missing
(:func:`warning`), each worker publishes its :class:`Isolation` in its presence record, and
``GET /healthz`` reports them. Limits (processes, files, sizes, memory) apply in every mode.
"""

import logging
import os
import shutil
import subprocess
from typing import Literal

from pydantic import BaseModel, Field

from factory.settings import Settings

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0

Level = Literal["full", "partial", "minimal", "off"]


class Isolation(BaseModel):
    """The isolation of prefab runners in force on one machine."""

    level: Level = Field(description="full: every part below; partial: some; minimal: limits only; off: disabled")
    mechanism: Literal["bwrap", "setuid", "none"]
    bwrap: str | None = Field(default=None, description="the bubblewrap executable in use")
    separate_users: bool = Field(description="each deployment runs as its own unprivileged uid")
    private_mounts: bool = Field(description="read-only system, own workspace, private /tmp, no state folder")
    network_none: bool = Field(description="the network policy `none` can be enforced (a network namespace)")
    missing: list[str] = Field(default_factory=list, description="what is not in force, and why")


def find_bwrap(settings: Settings) -> str | None:
    """The bubblewrap executable the settings name, if it exists."""
    return shutil.which(settings.bwrap_path)


def bwrap_works(bwrap: str, as_root: bool) -> str | None:
    """None when ``bwrap`` can make a sandbox here (mounts and an empty network), else why not."""
    args = [bwrap, "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    if not as_root:
        args.insert(1, "--unshare-user")
    try:
        done = subprocess.run(
            [*args, "--", "/bin/sh", "-c", "exit 0"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} cannot run: {exc}"
    if done.returncode != 0:
        return f"{bwrap} fails here: {done.stderr.decode(errors='replace').strip() or done.returncode}"
    return None


def probe(settings: Settings) -> Isolation:
    """The isolation runners get on this machine under ``settings`` (runs bubblewrap once)."""
    if settings.sandbox == "off":
        return Isolation(
            level="off",
            mechanism="none",
            separate_users=False,
            private_mounts=False,
            network_none=False,
            missing=["the sandbox is off (FACTORY_SANDBOX=off): prefab code runs as the worker's user"],
        )
    as_root = os.geteuid() == 0
    bwrap = find_bwrap(settings)
    why_not = bwrap_works(bwrap, as_root) if bwrap else f"bubblewrap ({settings.bwrap_path}) is not installed"
    missing: list[str] = []
    if not as_root:
        missing.append("separate users: the factory does not run as root, so runners keep its uid")
    if why_not is not None:
        missing.append(f"private mount view: {why_not}")
    usable = why_not is None
    network_none = usable or as_root  # root unshares a network namespace without bubblewrap
    if not network_none:
        missing.append("network policy `none`: needs bubblewrap or root; prefabs set to `none` will not run")
    if as_root and usable:
        level: Level = "full"
    elif as_root or usable:
        level = "partial"
    else:
        level = "minimal"
    return Isolation(
        level=level,
        mechanism="bwrap" if usable else ("setuid" if as_root else "none"),
        bwrap=bwrap if usable else None,
        separate_users=as_root,
        private_mounts=usable,
        network_none=network_none,
        missing=missing,
    )


def warning(isolation: Isolation) -> str | None:
    """A loud sentence for an operator when runners are less isolated than they could be, else None."""
    if not isolation.missing:
        return None
    return (
        f"prefab isolation is {isolation.level.upper()}: "
        + "; ".join(isolation.missing)
        + ". Untrusted prefab code may reach more than its own job (docs/security.md)."
    )
