"""FileService: the gateway's side of v3.0 files: accept uploads, serve a job's output files.

An upload is spooled to a temporary file under ``state_dir/tmp`` (see ``gateway.multipart``),
recorded in Redis (``keys.upload_key``, expiring with the retention) and then stored; the
record comes first so the retention sweep never takes a file being stored. Output files are
looked up by name in the job's files hash, written by the worker: a requested name is never
joined to a path, so ``..`` or an encoded ``/`` finds nothing and is a 404.

Storage calls block, so they run in a thread.
"""

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from starlette.requests import Request

from factory.errors import NotFound, ServiceUnavailable
from factory.filerefs import UploadRecord, content_type_for, is_hex_id, sanitize_name, upload_location
from factory.jobs import StoredFile, new_file_id, now_ms
from factory.settings import Settings
from factory.storage import ObjectMissing, Storage, StorageError
from factory.store import keys
from gateway.multipart import SpooledUpload, receive_upload

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputStream:
    """An output file ready to send: its description and its bytes, the first chunk already read."""

    file: StoredFile
    chunks: Iterator[bytes]


def _chained(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


class FileService:
    def __init__(self, settings: Settings, client: aioredis.Redis, storage: Storage) -> None:
        self.settings = settings
        self.client = client
        self.storage = storage
        self.spool_dir = settings.state_dir / "tmp"

    async def accept_upload(self, request: Request) -> UploadRecord:
        """Receive, record and store one uploaded file."""
        spooled = await receive_upload(request, self.spool_dir, self.settings.max_file_bytes)
        try:
            return await self.keep(spooled)
        finally:
            await asyncio.to_thread(spooled.path.unlink, missing_ok=True)

    async def keep(self, spooled: SpooledUpload, file_id: str | None = None, ttl_s: int | None = None) -> UploadRecord:
        """Record and store a spooled file, kept ``ttl_s`` (default: the retention); the caller removes the spool."""
        file_id = file_id or new_file_id()
        name = sanitize_name(spooled.filename)
        content_type = spooled.content_type or content_type_for(name)
        if content_type == "application/octet-stream":
            content_type = content_type_for(name)
        record = UploadRecord(
            file_id=file_id,
            name=name,
            size=spooled.size,
            content_type=content_type,
            location=upload_location(file_id, name),
            created_ms=now_ms(),
        )
        key = keys.upload_key(file_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record.to_hash())  # type: ignore[arg-type]
            pipe.expire(key, ttl_s or self.settings.retention_s)
            await pipe.execute()
        try:
            await asyncio.to_thread(self._put, record, spooled.path)
        except (StorageError, OSError) as exc:
            await self.client.delete(key)
            logger.error("storing upload %s failed: %s", file_id, exc)
            raise ServiceUnavailable("the file storage is unavailable", retry_after_s=5) from exc
        return record

    def _put(self, record: UploadRecord, path: Path) -> None:
        with path.open("rb") as source:
            self.storage.put(record.location, source, record.content_type)

    async def open_output(self, job_id: str, name: str) -> OutputStream:
        """The job's output file by its served name; :class:`NotFound` when there is none (any more)."""
        missing = NotFound(f"job {job_id!r} has no output file {name!r} (unknown, or its retention ended)")
        if not is_hex_id(job_id):
            raise missing
        raw = await self.client.hget(keys.files_key(job_id), name)
        if raw is None:
            raise missing
        stored = StoredFile.model_validate_json(raw)
        chunks = self.storage.iter_bytes(stored.location)
        try:
            first = await asyncio.to_thread(next, chunks, b"")
        except ObjectMissing as exc:
            raise missing from exc
        except StorageError as exc:
            logger.error("reading output %s of job %s failed: %s", name, job_id, exc)
            raise ServiceUnavailable("the file storage is unavailable", retry_after_s=5) from exc
        return OutputStream(stored, _chained(first, chunks))
