"""Where files live between processes: a local directory or an S3-compatible bucket.

:class:`Storage` is what the gateway (uploads in, outputs out) and the workers (inputs to the
workspace, outputs from it) share. Keys are ``/``-separated relative paths made by
``factory.filerefs``; both implementations refuse a key with an empty, ``.`` or ``..``
segment, so no key can leave the storage root. The local directory works across processes of
one machine, or across machines sharing a volume; S3 works anywhere.

Every method is blocking: the worker calls them directly, the gateway in a thread.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import urlsplit

from boto3.exceptions import S3UploadFailedError
from boto3.session import Session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from factory.settings import Settings

if TYPE_CHECKING:  # the stubs package (dev extra) exists for type checking only
    from mypy_boto3_s3 import S3Client

CHUNK_BYTES = 256 * 1024
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class StorageError(Exception):
    """The storage failed (unreachable, refused, misconfigured)."""


class ObjectMissing(StorageError):
    """No object under that key."""


class ObjectTooLarge(StorageError):
    """The object is larger than the caller's limit."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a relative ``/``-path without empty, ``.`` or ``..`` segments."""
    segments = key.split("/")
    if any(s in ("", ".", "..") or "\\" in s or "\x00" in s for s in segments):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    def put(self, key: str, source: BinaryIO, content_type: str) -> None:
        """Store the rest of ``source`` under ``key``, replacing any object there."""

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks (:class:`ObjectMissing` on the first ``next``)."""

    def get_file(self, key: str, dest: Path, max_bytes: int) -> int:
        """Copy the object to ``dest`` and return its size; :class:`ObjectTooLarge` past ``max_bytes``."""

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/``."""

    def children(self, prefix: str) -> list[str]:
        """The names directly under ``prefix/`` that hold objects (one level, like ``ls``)."""


def _copy_limited(source: BinaryIO, sink: BinaryIO, max_bytes: int) -> int:
    size = 0
    while chunk := source.read(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise ObjectTooLarge(f"larger than {max_bytes} bytes")
        sink.write(chunk)
    return size


class LocalStorage:
    """Objects as files under ``root``; a write goes to a temporary file renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: BinaryIO, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK_BYTES)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {key}: {exc.strerror or exc}") from exc

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc
        with handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    def get_file(self, key: str, dest: Path, max_bytes: int) -> int:
        try:
            with self._path(key).open("rb") as source, dest.open("wb") as sink:
                return _copy_limited(source, sink, max_bytes)
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def children(self, prefix: str) -> list[str]:
        try:
            return sorted(p.name for p in self._path(prefix).iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []


class S3Storage:
    """Objects in one bucket under an optional prefix, through any S3-compatible endpoint."""

    def __init__(self, client: "S3Client", bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, source: BinaryIO, content_type: str) -> None:
        try:
            self.client.upload_fileobj(source, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise StorageError(f"cannot store {key} in bucket {self.bucket}: {exc}") from exc

    def _get(self, key: str, max_bytes: int | None = None) -> BinaryIO:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES:
                raise ObjectMissing(key) from exc
            raise StorageError(f"cannot read {key} from bucket {self.bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {key} from bucket {self.bucket}: {exc}") from exc
        body = reply["Body"]
        if max_bytes is not None and reply.get("ContentLength", 0) > max_bytes:
            body.close()
            raise ObjectTooLarge(f"larger than {max_bytes} bytes")
        return body  # type: ignore[return-value]  # a StreamingBody reads like a binary file

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        body = self._get(self._key(key))
        try:
            while chunk := body.read(CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    def get_file(self, key: str, dest: Path, max_bytes: int) -> int:
        return self.get_object_file(self._key(key), dest, max_bytes)

    def get_object_file(self, full_key: str, dest: Path, max_bytes: int) -> int:
        """Like :meth:`get_file` for any key of the bucket, outside the prefix too (``s3://`` inputs)."""
        body = self._get(full_key, max_bytes)
        try:
            with dest.open("wb") as sink:
                return _copy_limited(body, sink, max_bytes)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot read {full_key} from bucket {self.bucket}: {exc}") from exc
        finally:
            body.close()

    def presigned_url(self, method: str, key: str, expires_s: int, content_type: str | None = None) -> str:
        """A URL that ``method`` (``GET`` or ``PUT``) works on for ``expires_s``, with no credentials."""
        operation = "put_object" if method == "PUT" else "get_object"
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if content_type and method == "PUT":
            params["ContentType"] = content_type
        try:
            return self.client.generate_presigned_url(operation, Params=params, ExpiresIn=expires_s)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot presign {key} in bucket {self.bucket}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) + "/"):
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if objects:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})  # type: ignore[typeddict-item]
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot delete {prefix}/ in bucket {self.bucket}: {exc}") from exc

    def children(self, prefix: str) -> list[str]:
        base = self._key(prefix) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base, Delimiter="/"):
                found.extend(p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot list {prefix}/ in bucket {self.bucket}: {exc}") from exc
        return sorted(found)


def s3_configured(settings: Settings) -> bool:
    """Whether ``s3://`` references can be read: S3 storage, or an S3 endpoint, is configured."""
    return bool(settings.s3_endpoint_url) or (settings.storage_url or "").startswith("s3://")


def s3_client(settings: Settings) -> "S3Client":
    """A client for the configured S3-compatible endpoint, with the credentials from Settings."""
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
    )
    return Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region or "us-east-1",
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        aws_session_token=settings.aws_session_token,
        config=config,
    )


def storage_from_settings(settings: Settings) -> Storage:
    """S3 for ``FACTORY_STORAGE_URL=s3://bucket/prefix``; else a local directory (the URL's path,
    or ``state_dir/files``). Nothing is created or contacted until the first call."""
    url = settings.storage_url
    if not url:
        return LocalStorage(settings.state_dir / "files")
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"FACTORY_STORAGE_URL {url!r} names no bucket")
        return S3Storage(s3_client(settings), parts.netloc, parts.path)
    if parts.scheme in ("", "file"):
        return LocalStorage(Path(parts.path if parts.scheme else url))
    raise ValueError(f"FACTORY_STORAGE_URL {url!r} must be s3://bucket/prefix or a directory")
