"""Each job's private working directory: ``data/inputs/`` and ``data/outputs/``, removed after.

The function runs with this directory as its current directory, which is where v3.0 prefabs
look for their input groups and write their outputs.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Workspace:
    def __init__(self, root: Path, job_id: str) -> None:
        self.path = root / "work" / job_id
        self.inputs = self.path / "data" / "inputs"
        self.outputs = self.path / "data" / "outputs"

    def create(self) -> None:
        self.inputs.mkdir(parents=True, exist_ok=True)
        self.outputs.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the workspace as the current directory."""
        previous = os.getcwd()
        os.chdir(self.path)
        try:
            yield
        finally:
            os.chdir(previous)
