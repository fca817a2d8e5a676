"""The sandbox a prefab runner starts in: its user, its mount view, its network (docs/security.md).

Pure functions from a runner's facts to what confines it; ``worker.runners`` starts the process.

- :func:`deployment_uid`: as root, each deployment runs as its own unprivileged uid, derived
  from the deployment id into ``[runner_uid_base, runner_uid_base + runner_uid_span)`` (no
  ``/etc/passwd`` entry needed), so ``/proc`` of every other process, other prefabs' workspaces
  and the factory's files are out of its reach. The runner drops to it itself
  (``worker/prefab_runner.py``), before any code of the environment runs.
- :func:`bwrap_prefix`: the bubblewrap command a runner is started under: a root of its own with
  the system read-only (``/usr``, ``/etc``, ``/lib*``...), the interpreter, the environment and a
  folder deployment's code read-only, the runners' workspace folder writable, a private
  size-limited ``/tmp`` and ``/dev/shm``, the state folder otherwise absent, no IPC or UTS shared,
  and, for the network policy ``none``, an empty network namespace. Each path keeps its own name
  inside, so the paths the work horse sends (workspace, code) mean the same thing there.
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from factory.settings import Settings

# Top-level system folders a Python program may need, read-only (a symlink stays a symlink).
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
MAX_LINK_HOPS = 16


def deployment_uid(settings: Settings, deployment_id: str) -> int:
    """The unprivileged uid (and gid) a deployment's runners run as, the same on every machine."""
    digest = hashlib.sha256(deployment_id.encode()).digest()
    return settings.runner_uid_base + int.from_bytes(digest[:8], "big") % settings.runner_uid_span


def network_policy(settings: Settings, prefab_id: str) -> str:
    """The prefab's network policy: its entry in ``runner_network_by_prefab``, else the default."""
    return settings.runner_network_by_prefab.get(prefab_id, settings.runner_network)


def _within(path: Path, parents: list[Path]) -> bool:
    return any(path == parent or parent in path.parents for parent in parents)


def interpreter_dirs(python: Path) -> list[Path]:
    """The prefixes an environment's ``python`` needs: every hop of its symlinks, and its ``home``."""
    found: list[Path] = []
    current = Path(os.path.abspath(python))
    for _ in range(MAX_LINK_HOPS):
        if not current.is_symlink():
            break
        current = Path(os.path.normpath(current.parent / os.readlink(current)))
        found.append(current.parent.parent)
    found.append(Path(os.path.realpath(python)).parent.parent)
    config = python.parent.parent / "pyvenv.cfg"
    try:
        for line in config.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "home" and value.strip():
                home = Path(value.strip())
                found += [home.parent, Path(os.path.realpath(home)).parent]
    except OSError:
        pass
    return found


@dataclass(frozen=True)
class MountPlan:
    """What a runner sees of the machine."""

    python: Path  # the environment's interpreter
    code_dir: str  # a folder deployment's code ('' for a wheel)
    state_dir: Path
    runner_path: Path  # worker/prefab_runner.py
    tmp_bytes: int


def _system_mounts() -> list[tuple[Path, list[str]]]:
    mounts: list[tuple[Path, list[str]]] = []
    for name in SYSTEM_DIRS:
        path = Path(name)
        if path.is_symlink():
            mounts.append((path, ["--symlink", os.readlink(path), name]))
        elif path.is_dir():
            mounts.append((path, ["--ro-bind", name, name]))
    resolv = Path(os.path.realpath("/etc/resolv.conf"))
    if resolv.is_file() and not _within(resolv, [Path("/etc")]):  # e.g. systemd-resolved's stub under /run
        mounts.append((resolv, ["--ro-bind", str(resolv), str(resolv)]))
    return mounts


def mount_args(plan: MountPlan) -> list[str]:
    """bubblewrap's mount options for ``plan``, parents before children."""
    state = Path(os.path.abspath(plan.state_dir))
    mounts = _system_mounts()
    size = str(plan.tmp_bytes)
    mounts += [
        (Path("/proc"), ["--proc", "/proc"]),
        (Path("/dev"), ["--dev", "/dev"]),
        (Path("/tmp"), ["--perms", "01777", "--size", size, "--tmpfs", "/tmp"]),
        (Path("/dev/shm"), ["--perms", "01777", "--size", size, "--tmpfs", "/dev/shm"]),
    ]
    bound = [Path(name) for name in SYSTEM_DIRS]
    readonly = [Path(os.path.abspath(plan.python.parent.parent)), *interpreter_dirs(plan.python)]
    if plan.code_dir:
        readonly.append(Path(os.path.abspath(plan.code_dir)))
    readonly.append(Path(os.path.abspath(plan.runner_path)))
    for path in dict.fromkeys(readonly):
        if path == Path("/") or _within(path, bound) or not path.exists():
            continue
        bound.append(path)
        mounts.append((path, ["--ro-bind", str(path), str(path)]))
    # The state folder: a root-owned folder that cannot be listed, holding only the workspaces (and
    # the environment when it lives there); an empty tmpfs when a read-only mount above holds it.
    hidden = ["--tmpfs"] if _within(state, bound) else ["--dir"]
    mounts.append((state, ["--perms", "0711", *hidden, str(state)]))
    work = state / "work"
    mounts.append((work, ["--bind", str(work), str(work)]))
    # The folders leading to each mount: bubblewrap would make them 0700, closed to the runner's uid.
    destinations = {path for path, _ in mounts}
    system = [Path(name) for name in SYSTEM_DIRS]
    for path in list(destinations):
        for parent in path.parents:
            if parent != Path("/") and parent not in destinations and not _within(parent, system):
                destinations.add(parent)
                mounts.append((parent, ["--perms", "0755", "--dir", str(parent)]))
    mounts.sort(key=lambda mount: len(mount[0].parts))  # stable: parents first, in the order above
    return [arg for _, args in mounts for arg in args]


def bwrap_prefix(bwrap: str, plan: MountPlan, *, as_root: bool, network_none: bool, pid_namespace: bool) -> list[str]:
    """The bubblewrap command line that runs the rest of the arguments in the sandbox."""
    args = [bwrap, "--die-with-parent", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        args.append("--unshare-user")  # bubblewrap needs it unprivileged; the uid stays the same
    if network_none:
        args.append("--unshare-net")
    if pid_namespace:
        args.append("--unshare-pid")
    return [*args, *mount_args(plan), "--chdir", "/", "--"]
