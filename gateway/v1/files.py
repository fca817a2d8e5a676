"""EcosystemFiles: the ecosystem's file endpoints (``/internal/files/...``) over the factory's uploads.

Every file is an upload as ``POST /files`` makes it (a record under ``keys.upload_key`` that
expires, its bytes in the storage, swept once the record is gone), so each reference handed out,
``upload://<file_id>``, is accepted in a call's ``files``. On top, each caller's files are
listed in sorted sets scored by expiry (``keys.caller_files_key``, ``keys.session_files_key``),
which expire with their last member.

* ``generate_upload_url``: with local storage, a signed, expiring ``PUT`` URL of the gateway
  itself (the record is written when the bytes arrive); with S3, a presigned ``PUT`` URL of the
  bucket (the record is written at once, so the sweep leaves the object alone).
* ``upload`` keeps a file for the retention (``retention_s``); ``upload_temp`` for its ``ttl``.
* ``download`` answers a URL a plain ``GET`` reads: a signed URL of the gateway for an upload (or a
  presigned S3 URL), this gateway's output URL with the job's token when auth is on, an http(s)
  URL as it is.
"""

import asyncio
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import redis.asyncio as aioredis
from starlette.requests import Request

from factory.errors import NotFound, PayloadTooLarge, ServiceUnavailable, ValidationFailed
from factory.filerefs import (
    UPLOAD_SCHEME,
    UPLOADS_PREFIX,
    UploadRecord,
    content_type_for,
    parse_ref,
    sanitize_name,
    upload_location,
)
from factory.jobs import new_file_id, now_ms
from factory.storage import ObjectMissing, S3Storage, StorageError
from factory.store import keys
from gateway.auth import Authenticator
from gateway.files import FileService
from gateway.multipart import SpooledUpload, receive_upload
from gateway.numbers import whole_number
from gateway.v1.schemas import FileEntry, FileListing
from gateway.v1.signed_urls import UrlSigner

logger = logging.getLogger(__name__)

PUT_PREFIX = "/internal/files/put"
BLOB_PREFIX = "/internal/files/blob"
SESSION_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_SESSION = re.compile(SESSION_PATTERN)
_JOB_FILE = re.compile(r"^/jobs/([0-9a-f]{32})/files/.+")


def upload_ref(file_id: str) -> str:
    return f"{UPLOAD_SCHEME}://{file_id}"


def check_session(session_id: str) -> str:
    if not _SESSION.match(session_id):
        raise ValidationFailed("session_id must be 1-128 letters, digits or . _ : -")
    return session_id


class EcosystemFiles:
    def __init__(self, files: FileService, client: aioredis.Redis, signer: UrlSigner) -> None:
        self.files = files
        self.settings = files.settings
        self.storage = files.storage
        self.client = client
        self.signer = signer

    # --- uploads -------------------------------------------------------------------------------

    async def upload_url(self, base_url: str, filename: str, content_type: str | None) -> tuple[str, str]:
        """Where to PUT the file's bytes, and the reference the file will have."""
        file_id = new_file_id()
        name = sanitize_name(filename)
        ttl_s = self.settings.signed_url_ttl_s
        if isinstance(self.storage, S3Storage):
            record = UploadRecord(
                file_id=file_id,
                name=name,
                size=0,  # unknown until the client's PUT
                content_type=content_type or content_type_for(name),
                location=upload_location(file_id, name),
                created_ms=now_ms(),
            )
            await self._record(record, self.settings.retention_s)
            url = await asyncio.to_thread(self.storage.presigned_url, "PUT", record.location, ttl_s, content_type)
        else:
            url = self.signer.sign(base_url, "PUT", f"{PUT_PREFIX}/{file_id}/{name}", ttl_s)
        return url, upload_ref(file_id)

    async def receive_put(self, request: Request, file_id: str, name: str) -> UploadRecord:
        """Store the body of a signed PUT (verified by the route) as the upload ``file_id``."""
        spooled = await _spool_body(request, self.files.spool_dir, self.settings.max_file_bytes, name)
        try:
            return await self.files.keep(spooled, file_id=file_id)
        finally:
            await asyncio.to_thread(spooled.path.unlink, missing_ok=True)

    async def _record(self, record: UploadRecord, ttl_s: int) -> None:
        key = keys.upload_key(record.file_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record.to_hash())  # type: ignore[arg-type]
            pipe.expire(key, ttl_s)
            await pipe.execute()

    async def track(self, caller: str, kind: str, file_id: str, ttl_s: int, session_id: str | None = None) -> None:
        """List the file among the caller's (and the session's) until it expires."""
        expires_ms = now_ms() + ttl_s * 1000
        names = [keys.caller_files_key(caller, kind)]
        if session_id is not None:
            names.append(keys.session_files_key(caller, session_id))
        for key in names:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {file_id: expires_ms})
                pipe.zrange(key, -1, -1, withscores=True)
                _, last = await pipe.execute()
            await self.client.pexpireat(key, int(last[0][1]))

    def temp_ttl(self, raw: str | None) -> int:
        """A temporary file's lifetime: the form's ``ttl`` (default a day), at least 1 s, at most the retention."""
        if raw is None:
            return min(86400, self.settings.retention_s)
        ttl_s = whole_number(raw)  # digits only: not "", " 5", "1_0", "+5" or "٣"
        if ttl_s is None:
            raise ValidationFailed("ttl must be a whole number of seconds")
        return max(1, min(ttl_s, self.settings.retention_s))

    # --- listing and cleanup ----------------------------------------------------------------------

    async def receive_multipart(self, request: Request) -> SpooledUpload:
        """The multipart body's file, spooled (the caller removes it), with its text fields."""
        return await receive_upload(request, self.files.spool_dir, self.settings.max_file_bytes)

    async def listing(
        self, caller: str, kind: str, session_id: str | None, limit: int, continuation_token: str | None
    ) -> FileListing:
        """A page of the caller's files of a kind (or of a session), oldest first; expired ones are dropped first."""
        key = keys.caller_files_key(caller, kind) if session_id is None else keys.session_files_key(caller, session_id)
        await self.client.zremrangebyscore(key, "-inf", now_ms())
        offset = whole_number(continuation_token) or 0
        ids: list[bytes] = await self.client.zrange(key, offset, offset + limit)  # type: ignore[assignment]
        entries: list[FileEntry] = []
        for raw in ids[:limit]:
            fields = await self.client.hgetall(keys.upload_key(raw.decode()))
            if not fields:
                continue
            record = UploadRecord.from_hash(fields)  # type: ignore[arg-type]
            modified = datetime.fromtimestamp(record.created_ms / 1000, tz=UTC).isoformat()
            entries.append(
                FileEntry(
                    key=record.location, size=record.size, last_modified=modified, s3_url=upload_ref(record.file_id)
                )
            )
        more = len(ids) > limit
        return FileListing(files=entries, next_token=str(offset + limit) if more else None)

    async def cleanup(self, caller: str, session_id: str) -> int:
        """Delete every temporary file of the session now; how many there were."""
        session_key = keys.session_files_key(caller, session_id)
        ids = [raw.decode() for raw in await self.client.zrange(session_key, 0, -1)]  # type: ignore[union-attr]
        deleted = 0
        for file_id in ids:
            deleted += int(await self.client.delete(keys.upload_key(file_id)))
            await self.client.zrem(keys.caller_files_key(caller, "temp"), file_id)
            try:
                await asyncio.to_thread(self.storage.delete_prefix, f"{UPLOADS_PREFIX}/{file_id}")
            except StorageError as exc:  # its record is gone: the retention sweep takes it later
                logger.warning("deleting temporary file %s failed: %s", file_id, exc)
        await self.client.delete(session_key)
        return deleted

    # --- downloads ----------------------------------------------------------------------------------

    async def download_url(self, base_url: str, ref: str, auth: Authenticator | None, ttl_s: int) -> str:
        """A URL that a plain GET downloads ``ref`` from, for about ``ttl_s``."""
        try:
            parsed = parse_ref(ref)
        except ValueError as exc:
            raise ValidationFailed(f"s3_url: {exc}") from exc
        if parsed.kind == "upload":
            record = await self.upload_record(parsed.target)
            if isinstance(self.storage, S3Storage):
                return await asyncio.to_thread(self.storage.presigned_url, "GET", record.location, ttl_s)
            return self.signer.sign(base_url, "GET", f"{BLOB_PREFIX}/{record.file_id}/{record.name}", ttl_s)
        if parsed.kind == "s3":
            if not isinstance(self.storage, S3Storage) or parsed.bucket != self.storage.bucket:
                raise ValidationFailed("s3_url: only objects of the factory's own bucket can be downloaded")
            return await asyncio.to_thread(self._presign_bucket_key, parsed.target, ttl_s)
        job = _JOB_FILE.match(urlsplit(ref).path)
        if job is None or auth is None:
            return ref
        separator = "&" if urlsplit(ref).query else "?"
        return f"{ref}{separator}{urlencode({'token': auth.signer.issue(job.group(1))})}"

    def _presign_bucket_key(self, full_key: str, ttl_s: int) -> str:
        assert isinstance(self.storage, S3Storage)
        params = {"Bucket": self.storage.bucket, "Key": full_key}
        return self.storage.client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_s)

    async def upload_record(self, file_id: str) -> UploadRecord:
        fields = await self.client.hgetall(keys.upload_key(file_id))
        if not fields:
            raise NotFound(f"no file {upload_ref(file_id)} (unknown, or it expired)")
        return UploadRecord.from_hash(fields)  # type: ignore[arg-type]

    async def open_upload(self, file_id: str) -> tuple[UploadRecord, Iterator[bytes]]:
        """An upload's record and its bytes, the first chunk read already (so a missing object is a 404)."""
        record = await self.upload_record(file_id)
        chunks = self.storage.iter_bytes(record.location)
        try:
            first = await asyncio.to_thread(next, chunks, b"")
        except ObjectMissing as exc:
            raise NotFound(f"no file {upload_ref(file_id)} (it expired)") from exc
        except StorageError as exc:
            raise ServiceUnavailable("the file storage is unavailable", retry_after_s=5) from exc
        return record, _chained(first, chunks)


def _chained(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


async def _spool_body(request: Request, spool_dir: Path, max_bytes: int, name: str) -> SpooledUpload:
    """Write a raw request body to a new file in ``spool_dir``; 413 past ``max_bytes``."""
    declared = whole_number(request.headers.get("content-length"))
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"the file exceeds the limit of {max_bytes} bytes")
    await asyncio.to_thread(spool_dir.mkdir, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=spool_dir, prefix="put-")
    path = Path(tmp)
    size = 0
    try:
        with os.fdopen(fd, "wb") as sink:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"the file exceeds the limit of {max_bytes} bytes")
                await asyncio.to_thread(sink.write, chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    content_type = request.headers.get("content-type") or None
    return SpooledUpload(path, name, content_type, size)


def expires_from(raw: str) -> int:
    expires_s = whole_number(raw)
    return int(time.time()) - 1 if expires_s is None else expires_s
