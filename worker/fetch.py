"""Fetches one input file reference into a local file: an upload, an http(s) URL or an s3 URL.

Each fetch writes to a path it is given and returns the file's own name (not yet sanitised):
the upload's filename, the ``Content-Disposition`` filename or last URL segment, the S3 key's
last segment. Every fetch stops at its byte limit; an http(s) fetch also at the configured
time limit, as a whole and per read.
"""

import email.message
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import redis

from factory.filerefs import FileRef, UploadRecord
from factory.settings import Settings
from factory.storage import ObjectMissing, ObjectTooLarge, S3Storage, Storage, StorageError, s3_client, s3_configured
from factory.store import keys

CHUNK_BYTES = 256 * 1024
MAX_REDIRECTS = 5


class FetchFailed(Exception):
    """The reference could not be turned into a local file; the message is for the caller."""


class TooLarge(FetchFailed):
    """The file is larger than the byte limit of the fetch."""


def _shown(url: str) -> str:
    """The URL without its query (which may hold a presigned credential)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _name_from_response(response: httpx.Response) -> str:
    disposition = response.headers.get("content-disposition")
    if disposition:
        message = email.message.Message()
        message["content-disposition"] = disposition
        filename = message.get_filename()
        if filename:
            return filename
    return unquote(response.url.path.rsplit("/", 1)[-1])


class InputFetcher:
    def __init__(self, settings: Settings, storage: Storage, client: redis.Redis) -> None:
        self.settings = settings
        self.storage = storage
        self.client = client
        self._s3: S3Storage | None = None

    def fetch(self, ref: FileRef, dest: Path, max_bytes: int) -> str:
        """Write the referenced file to ``dest``; return its original name."""
        try:
            if ref.kind == "upload":
                return self._upload(ref.target, dest, max_bytes)
            if ref.kind == "s3":
                return self._s3_object(ref.bucket, ref.target, dest, max_bytes)
            return self._http(ref.target, dest, max_bytes)
        except ObjectTooLarge as exc:
            raise TooLarge(f"the file is larger than the limit of {max_bytes} bytes") from exc

    def _upload(self, file_id: str, dest: Path, max_bytes: int) -> str:
        fields = self.client.hgetall(keys.upload_key(file_id))
        if not fields:
            raise FetchFailed(f"upload {file_id} is unknown or expired")
        record = UploadRecord.from_hash(fields)  # type: ignore[arg-type]
        try:
            self.storage.get_file(record.location, dest, max_bytes)
        except ObjectMissing as exc:
            raise FetchFailed(f"upload {file_id} is no longer stored") from exc
        except ObjectTooLarge:
            raise
        except StorageError as exc:
            raise FetchFailed(f"upload {file_id} could not be read from storage") from exc
        return record.name

    def _s3_object(self, bucket: str, key: str, dest: Path, max_bytes: int) -> str:
        if not s3_configured(self.settings):
            raise FetchFailed(
                "s3:// references need an S3-compatible store: set FACTORY_STORAGE_URL or FACTORY_S3_ENDPOINT_URL"
            )
        if self._s3 is None or self._s3.bucket != bucket:
            self._s3 = S3Storage(s3_client(self.settings), bucket)
        try:
            self._s3.get_object_file(key, dest, max_bytes)
        except ObjectMissing as exc:
            raise FetchFailed(f"s3://{bucket}/{key} does not exist") from exc
        except ObjectTooLarge:
            raise
        except StorageError as exc:
            raise FetchFailed(f"s3://{bucket}/{key} could not be read: {exc}") from exc
        return key.rsplit("/", 1)[-1]

    def _http(self, url: str, dest: Path, max_bytes: int) -> str:
        timeout_s = self.settings.fetch_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            client = httpx.Client(
                timeout=timeout_s, follow_redirects=True, max_redirects=MAX_REDIRECTS, trust_env=False
            )
            with client, client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise FetchFailed(f"GET {_shown(url)} answered {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise ObjectTooLarge(declared)
                size = 0
                with dest.open("wb") as sink:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        size += len(chunk)
                        if size > max_bytes:
                            raise ObjectTooLarge(str(size))
                        if time.monotonic() > deadline:
                            raise FetchFailed(f"GET {_shown(url)} took longer than {timeout_s:g} s")
                        sink.write(chunk)
                return _name_from_response(response)
        except httpx.TimeoutException as exc:
            raise FetchFailed(f"GET {_shown(url)} took longer than {timeout_s:g} s") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FetchFailed(f"GET {_shown(url)} failed: {type(exc).__name__}: {exc}") from exc
