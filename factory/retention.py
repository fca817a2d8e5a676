"""Retention for files: remove stored files and workspaces that outlived their job or upload.

A job's outputs are kept while its record is (the record expires ``retention_s`` after the
terminal event), an upload while its record is (``retention_s`` after the upload). The sweep
asks Redis about each stored group and deletes the ones whose record is gone. A record is
written before the first byte of its files is stored, so a sweep never takes files in flight.

Workspaces are removed by the worker when each job ends; the sweep only catches the ones a
killed worker process left behind: older than the retention and with no job still running.
"""

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from factory import keys
from factory.filerefs import OUTPUTS_PREFIX, UPLOADS_PREFIX, is_hex_id
from factory.jobs import JobStatus
from factory.storage import Storage

logger = logging.getLogger(__name__)


def _without_record(client: redis.Redis, ids: list[str], record_key: Callable[[str], str]) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for item in ids:
            pipe.exists(record_key(item))
        found = pipe.execute()
    return [item for item, exists in zip(ids, found, strict=True) if not exists]


def sweep_storage(storage: Storage, client: redis.Redis) -> int:
    """Delete the stored outputs and uploads whose record has expired; return how many groups."""
    removed = 0
    for prefix, record_key in ((OUTPUTS_PREFIX, keys.job_key), (UPLOADS_PREFIX, keys.upload_key)):
        ids = [name for name in storage.children(prefix) if is_hex_id(name)]
        for item in _without_record(client, ids, record_key) if ids else []:
            storage.delete_prefix(f"{prefix}/{item}")
            removed += 1
    if removed:
        logger.info("retention sweep removed %d stored file group(s)", removed)
    return removed


def _job_running(client: redis.Redis, job_id: str) -> bool:
    raw = client.hget(keys.job_key(job_id), "status")
    if raw is None:
        return False
    return not JobStatus(orjson.loads(raw)).is_final


def sweep_workspaces(state_dir: Path, client: redis.Redis, retention_s: float) -> int:
    """Remove workspaces under ``state_dir/work`` older than the retention whose job is not running."""
    root = state_dir / "work"
    if not root.is_dir():
        return 0
    cutoff = time.time() - retention_s
    removed = 0
    for path in root.iterdir():
        try:
            stale = path.lstat().st_mtime < cutoff
        except FileNotFoundError:
            continue
        if stale and not _job_running(client, path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("retention sweep removed %d stale workspace(s)", removed)
    return removed


def sweep_once(storage: Storage, client: redis.Redis, state_dir: Path, retention_s: float, lock_s: float) -> None:
    """One round: this machine's workspaces, and the storage if no other process swept it lately."""
    sweep_workspaces(state_dir, client, retention_s)
    if client.set(keys.sweep_lock_key(), b"1", nx=True, ex=max(1, int(lock_s))):
        sweep_storage(storage, client)
