"""Moves a job's files between storage and its workspace (v3.0 file handling).

Before the function runs, each group of the call's ``files`` is materialised into
``data/inputs/<group>/`` under each file's own sanitised name (``name-2.ext`` when two files
of a group share one). After it ends, every regular file under ``data/outputs/`` is stored and
described in the job's files hash (``keys.files_key``), which the gateway serves from. The
record is written by RECORD_FILES (``factory.store.scripts``), fenced like every write of an
execution: only the execution that owns the job records files, and only while the job is open.

Safety: names never come from a caller unsanitised; a symlink or any other non-regular entry
in ``data/outputs/`` fails the job (``OUTPUT_FILE_ERROR``) instead of being followed, and
outputs are opened without following a link anywhere on their path (``worker.workspace.open_beneath``:
a prefab's process may still run while they are collected). Limits: ``max_file_bytes`` per file and
``max_job_file_bytes`` for the inputs of a job and, separately, for its outputs.
"""

import logging
import os
import stat
from pathlib import Path

import orjson
import redis

from factory.events import INPUT_FILE_ERROR, OUTPUT_FILE_ERROR
from factory.filerefs import (
    OUTPUT_GROUP,
    content_type_for,
    output_location,
    output_url,
    parse_ref,
    sanitize_name,
    unique_name,
)
from factory.jobs import InvocationRequest, StoredFile
from factory.settings import Settings
from factory.storage import Storage, StorageError
from factory.store import keys
from factory.store.scripts import RECORD_FILES_LUA
from worker.fetch import FetchFailed, InputFetcher, TooLarge
from worker.workspace import Workspace, open_beneath

logger = logging.getLogger(__name__)

MAX_OUTPUT_FILES = 1000


class FileError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def collect_outputs(root: Path, max_file_bytes: int, max_total_bytes: int) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (served name, path); refuses links and oversize files."""
    found: list[tuple[str, Path]] = []
    taken: set[str] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            path = base / entry
            shown = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise FileError(OUTPUT_FILE_ERROR, f"data/outputs/{shown} is a symbolic link; outputs must be files")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise FileError(OUTPUT_FILE_ERROR, f"data/outputs/{shown} is not a regular file")
            size = path.stat().st_size
            total += size
            if size > max_file_bytes:
                raise FileError(OUTPUT_FILE_ERROR, f"data/outputs/{shown} exceeds {max_file_bytes} bytes per file")
            if total > max_total_bytes:
                raise FileError(OUTPUT_FILE_ERROR, f"the outputs exceed {max_total_bytes} bytes per job")
            name = "/".join(sanitize_name(part) for part in path.relative_to(root).parts)
            found.append((unique_name(name, taken), path))
            if len(found) > MAX_OUTPUT_FILES:
                raise FileError(OUTPUT_FILE_ERROR, f"more than {MAX_OUTPUT_FILES} output files")
    return found


class FileBridge:
    def __init__(self, settings: Settings, storage: Storage, client: redis.Redis) -> None:
        self.settings = settings
        self.storage = storage
        self.client = client
        self.fetcher = InputFetcher(settings, storage, client)
        self._record = client.register_script(RECORD_FILES_LUA)

    def fetch_inputs(self, request: InvocationRequest, workspace: Workspace) -> None:
        """Materialise every input group into ``data/inputs/<group>/``; :class:`FileError` on any failure."""
        remaining = self.settings.max_job_file_bytes
        for group, refs in request.files.items():
            folder = workspace.inputs / sanitize_name(group)
            folder.mkdir(parents=True, exist_ok=True)
            taken: set[str] = set()
            for index, ref in enumerate(refs):
                limit = min(self.settings.max_file_bytes, remaining)
                part = folder / f".part-{index}"
                try:
                    name = self.fetcher.fetch(parse_ref(ref), part, limit)
                except (ValueError, FetchFailed, OSError) as exc:
                    part.unlink(missing_ok=True)
                    reason = self._too_large(limit) if isinstance(exc, TooLarge) else str(exc)
                    raise FileError(INPUT_FILE_ERROR, f"files.{group}[{index}]: {reason}") from exc
                remaining -= part.stat().st_size
                part.rename(folder / unique_name(sanitize_name(name), taken))

    def _too_large(self, limit: int) -> str:
        if limit < self.settings.max_file_bytes:
            return f"the input files are larger than the limit of {self.settings.max_job_file_bytes} bytes per job"
        return f"the file is larger than the limit of {limit} bytes per file"

    def store_outputs(self, request: InvocationRequest, workspace: Workspace, token: str) -> bytes | None:
        """Store ``data/outputs/`` and record them as execution ``token``'s; the encoded ``files`` event,
        or None when there are none or the execution no longer owns the open job."""
        settings = self.settings
        try:
            outputs = collect_outputs(workspace.outputs, settings.max_file_bytes, settings.max_job_file_bytes)
        except OSError as exc:
            raise FileError(OUTPUT_FILE_ERROR, f"the outputs could not be read: {exc}") from exc
        if not outputs:
            return None
        base_url = settings.public_base_url()
        stored: list[StoredFile] = []
        for name, path in outputs:
            location = output_location(request.job_id, name)
            content_type = content_type_for(name)
            try:
                size = self._put(location, workspace, path, content_type)
            except (OSError, StorageError) as exc:
                logger.warning("storing output %s failed: %s", name, exc)
                raise FileError(OUTPUT_FILE_ERROR, f"output file {name} could not be stored: {exc}") from exc
            url = output_url(base_url, request.job_id, name)
            stored.append(StoredFile(name=name, url=url, size=size, content_type=content_type, location=location))
        files = {OUTPUT_GROUP: [item.url for item in stored]}
        args: list[bytes | str] = [token, orjson.dumps(files)]
        for item in stored:
            args.extend((item.name, item.model_dump_json()))
        recorded = int(self._record(keys=[keys.job_key(request.job_id), keys.files_key(request.job_id)], args=args))
        if recorded != 1:
            return None  # the job ended meanwhile (its stream is closed) or passed to another execution
        return orjson.dumps({"type": "files", "data": files})

    def _put(self, location: str, workspace: Workspace, path: Path, content_type: str) -> int:
        fd = open_beneath(workspace.path, path.relative_to(workspace.path))
        with os.fdopen(fd, "rb") as source:
            size = os.fstat(fd).st_size
            if size > self.settings.max_file_bytes:  # it grew since it was listed
                raise FileError(OUTPUT_FILE_ERROR, f"{path.name} exceeds {self.settings.max_file_bytes} bytes per file")
            self.storage.put(location, source, content_type)
        return size
