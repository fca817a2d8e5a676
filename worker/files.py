"""Moves a job's files between storage and its workspace (v3.0 file handling).

Placeholder bridge until file storage lands: a call with input files is refused with
``INPUT_FILE_ERROR`` and output files are not collected.
"""

from factory.events import INPUT_FILE_ERROR
from factory.jobs import InvocationRequest
from worker.workspace import Workspace


class FileError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FileBridge:
    def fetch_inputs(self, request: InvocationRequest, workspace: Workspace) -> None:
        if any(request.files.values()):
            raise FileError(INPUT_FILE_ERROR, "input files are not supported yet")

    def store_outputs(self, request: InvocationRequest, workspace: Workspace) -> bytes | None:
        return None
