"""The gateway URL ``factory up`` records in its state folder, for the CLI's other commands.

``factory up`` writes ``<state dir>/gateway.json`` before it starts the gateway and removes it when
it stops, so ``factory invoke`` (and jobs, status, follow, cancel) find the gateway of the factory
running from the same folder without ``--url``. A record left behind by a killed ``up`` names a
gateway that no longer answers: the command then exits as for any unreachable gateway.
"""

import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

RECORD_NAME = "gateway.json"


class GatewayRecord(BaseModel):
    """What ``factory up`` serves: the gateway's URL and the supervisor's pid."""

    url: str
    pid: int


def record_path(state_dir: Path) -> Path:
    return state_dir / RECORD_NAME


def write_record(state_dir: Path, url: str) -> Path:
    """Record the gateway URL (atomically: a reader never sees half a file); returns the file."""
    path = record_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(GatewayRecord(url=url, pid=os.getpid()).model_dump_json(), encoding="utf-8")
    partial.replace(path)
    return path


def read_record(state_dir: Path) -> GatewayRecord | None:
    """The recorded gateway, or None when there is none (or it cannot be read)."""
    try:
        return GatewayRecord.model_validate_json(record_path(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None


def remove_record(state_dir: Path) -> None:
    """Forget the gateway, if this process recorded it (a second ``up`` in the folder may own it now)."""
    record = read_record(state_dir)
    if record is not None and record.pid == os.getpid():
        record_path(state_dir).unlink(missing_ok=True)
