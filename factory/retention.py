"""Retention: every Redis key written for a job ends with a TTL, and stored files and workspaces
that outlived their job or upload are removed.

Keys: the job's record, log and files hash get their TTL from the terminal append
(``factory.store.eventlog``). RQ's view of the job (its hash and registry entries) gets one from
whoever ends the job: the worker when it releases a job it ran, the gateway's cancel or a settle of
a lost execution otherwise (``factory.store.rqview``). ``factory:recent`` is trimmed by time and
given a TTL in the same transaction as every write (:func:`recent_writes`), so it never outgrows the
retention.

A job's outputs are kept while its record is (the record expires ``retention_s`` after the
terminal event), an upload while its record is (``retention_s`` after the upload). The sweep
asks Redis about each stored group and deletes the ones whose record is gone. A record is
written before the first byte of its files is stored, so a sweep never takes files in flight.

Workspaces are removed by the worker when each job ends; the sweep catches the ones a killed
worker or work horse left behind, once their job no longer runs (or their horse is gone): a
worker sweeps when it starts, each gateway every ``FACTORY_SWEEP_INTERVAL_S``.
"""

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import redis
from redis.typing import EncodableT

from factory.filerefs import OUTPUTS_PREFIX, UPLOADS_PREFIX, is_hex_id
from factory.jobs import JobStatus
from factory.storage import Storage
from factory.store import fields, keys

logger = logging.getLogger(__name__)

# A workspace is left alone this long after its last change (its worker may be done with it just now).
WORKSPACE_GRACE_S = 10.0
# A work horse's spare workspace is ``.spare-<pid>`` (``worker.workspace.spare_workspace``).
SPARE_PREFIX = ".spare-"


def recent_writes(job_id: str, created_ms: int, retention_s: int) -> list[list[EncodableT]]:
    """The commands that put the job in the recent list and drop entries older than the retention."""
    key = keys.recent_jobs_key()
    return [
        ["ZADD", key, created_ms, job_id],
        ["ZREMRANGEBYSCORE", key, "-inf", created_ms - retention_s * 1000],
        ["EXPIRE", key, retention_s],
    ]


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
    raw = client.hget(keys.job_key(job_id), fields.STATUS)
    if raw is None:
        return False
    return not JobStatus(orjson.loads(raw)).is_final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandoned(client: redis.Redis, path: Path, mtime: float, now: float, retention_s: float) -> bool:
    """Whether a workspace under ``work/`` belongs to nothing alive any more."""
    name = path.name
    if now - mtime < WORKSPACE_GRACE_S:
        return False  # its worker may be removing (or renaming) it right now
    if name.startswith(SPARE_PREFIX):
        pid = name.removeprefix(SPARE_PREFIX)
        return not (pid.isdigit() and _pid_alive(int(pid)))
    if is_hex_id(name):
        return not _job_running(client, name)
    return mtime < now - retention_s


def sweep_workspaces(state_dir: Path, client: redis.Redis, retention_s: float) -> int:
    """Remove the workspaces under ``state_dir/work`` that nothing uses any more; return how many.

    A job's workspace goes once its job is no longer running (ended, or its record gone), a work
    horse's spare once that horse is gone; each only after :data:`WORKSPACE_GRACE_S` untouched,
    so a worker finishing with one is never raced. Anything else there goes after the retention.
    """
    root = state_dir / "work"
    if not root.is_dir():
        return 0
    now = time.time()
    removed = 0
    for path in root.iterdir():
        try:
            mtime = path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if _abandoned(client, path, mtime, now, retention_s):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("retention sweep removed %d abandoned workspace(s)", removed)
    return removed


def sweep_once(storage: Storage, client: redis.Redis, state_dir: Path, retention_s: float, lock_s: float) -> None:
    """One round: this machine's workspaces, and the storage if no other process swept it lately."""
    sweep_workspaces(state_dir, client, retention_s)
    if client.set(keys.sweep_lock_key(), b"1", nx=True, ex=max(1, int(lock_s))):
        sweep_storage(storage, client)
