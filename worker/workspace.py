"""Each job's private working directory: ``data/inputs/`` and ``data/outputs/``, removed after.

The function runs with this directory as its current directory, which is where v3.0 prefabs
look for their input groups and write their outputs.

Deliberate oddity, for speed: a work horse runs thousands of jobs, and creating and removing
four directories costs ~0.35 ms a job on ext4 (mostly ``rmdir``). So a horse keeps a *spare*
(``spare_workspace``): a workspace that a job left exactly as it was created is renamed to the
spare when the job ends, and renamed to the next job's directory when it starts, one syscall
each. Anything else is removed the general way.
"""

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath


def open_beneath(root: Path, relative: PurePath) -> int:
    """A descriptor of the regular file at ``relative`` under ``root``, reached without following any
    symbolic link: each directory is opened from the one before it with ``O_NOFOLLOW``.

    The worker opens a job's outputs as root while the prefab's processes may still run (a runner
    outlives its jobs): checking the path first and opening it after would let one swap a folder
    for a link to any file of the machine in between. Raises :class:`OSError` for a link anywhere
    on the way, or an entry that is not a regular file (a FIFO is not waited on).
    """
    *folders, name = relative.parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        found = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise OSError(f"{relative} is not a regular file")
    return found


def spare_workspace(root: Path, horse_pid: int) -> Path:
    """Where the horse ``horse_pid`` keeps its spare workspace (hidden: never a job id)."""
    return root / "work" / f".spare-{horse_pid}"


class Workspace:
    def __init__(self, root: Path, job_id: str) -> None:
        self.path = root / "work" / job_id
        self.data = self.path / "data"
        self.inputs = self.data / "inputs"
        self.outputs = self.data / "outputs"

    def create(self, spare: Path | None = None) -> None:
        """Make the directories: by renaming ``spare`` when it holds an unused workspace."""
        if spare is not None:
            try:
                os.rename(spare, self.path)
                return
            except OSError:
                pass  # no spare yet
        try:
            for path in (self.path, self.data, self.inputs, self.outputs):
                os.mkdir(path)
        except OSError:  # no work/ directory yet, or a workspace left over: the general way
            self.inputs.mkdir(parents=True, exist_ok=True)
            self.outputs.mkdir(parents=True, exist_ok=True)

    def remove(self, spare: Path | None = None) -> None:
        """Remove the directories; with ``spare``, keep them there instead when the job left them untouched."""
        if spare is not None and self._untouched():
            try:
                os.rename(self.path, spare)
                os.utime(spare)  # a fresh mtime: the retention sweep removes only old workspaces
                return
            except OSError:
                pass
        shutil.rmtree(self.path, ignore_errors=True)

    def _untouched(self) -> bool:
        """Whether the workspace holds its two empty directories and nothing else (no links either)."""
        try:
            return (
                _directories(self.path) == {"data"}
                and _directories(self.data) == {"inputs", "outputs"}
                and not os.listdir(self.inputs)
                and not os.listdir(self.outputs)
            )
        except OSError:
            return False

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the workspace as the current directory."""
        previous = os.getcwd()
        os.chdir(self.path)
        try:
            yield
        finally:
            os.chdir(previous)


def _directories(path: Path) -> set[str] | None:
    """The names in ``path`` when each is a directory (not a link to one), else None."""
    names: set[str] = set()
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                return None
            names.add(entry.name)
    return names
