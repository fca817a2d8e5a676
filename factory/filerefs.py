"""v3.0 files as the factory names them: call references, upload records, storage layout, names.

A call's ``files`` holds references, each one of:

* ``upload://<file_id>``: a file uploaded with ``POST /files`` (its record is a Redis hash);
* ``http://...`` / ``https://...``: fetched by the worker, within size and time limits;
* ``s3://<bucket>/<key>``: read through the configured S3-compatible store.

Inside the storage, uploads live under ``uploads/<file_id>/`` and a job's outputs under
``outputs/<job_id>/``, so the retention sweep removes each as a whole once its Redis record
is gone. File names are sanitised here, once, for every way a name arrives (upload filename,
URL path, ``Content-Disposition``, a prefab's output file); the gateway never joins a caller's
name to a path (it looks names up in the job's files hash).
"""

import mimetypes
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

import orjson
from pydantic import BaseModel

UPLOAD_SCHEME = "upload"
UPLOADS_PREFIX = "uploads"
OUTPUTS_PREFIX = "outputs"
OUTPUT_GROUP = "output"
MAX_NAME_BYTES = 200
FALLBACK_NAME = "file"

_FILE_ID = re.compile(r"^[0-9a-f]{32}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

RefKind = Literal["upload", "http", "s3"]


@dataclass(frozen=True)
class FileRef:
    """A parsed reference: for uploads ``target`` is the file id, for s3 ``bucket`` + ``target`` (the key)."""

    kind: RefKind
    target: str
    bucket: str = ""


def parse_ref(ref: str) -> FileRef:
    """Parse one reference of a call's ``files``; ``ValueError`` says what is wrong with it."""
    if len(ref) > 4096:
        raise ValueError("reference is longer than 4096 characters")
    parts = urlsplit(ref)
    scheme = parts.scheme.lower()
    if scheme == UPLOAD_SCHEME:
        file_id = parts.netloc or parts.path.lstrip("/")
        if not _FILE_ID.match(file_id):
            raise ValueError("upload reference must be upload://<file_id> as returned by POST /files")
        return FileRef("upload", file_id)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError("URL has no host")
        _ = parts.port  # ValueError for a port that is not a number in 0-65535
        return FileRef("http", ref)
    if scheme == "s3":
        key = parts.path.lstrip("/")
        if not _BUCKET.match(parts.netloc) or not key:
            raise ValueError("S3 reference must be s3://<bucket>/<key>")
        return FileRef("s3", key, bucket=parts.netloc)
    raise ValueError("reference must be upload://<file_id>, an http(s):// URL or an s3:// URL")


def sanitize_name(name: str, fallback: str = FALLBACK_NAME) -> str:
    """One safe path segment from an untrusted file name: its last component, no separators or
    control characters, not ``.``/``..``, no leading dot, at most :data:`MAX_NAME_BYTES` bytes."""
    base = re.split(r"[/\\]", unicodedata.normalize("NFC", name))[-1]
    cleaned = _UNSAFE.sub("_", base).strip(" .")
    if not cleaned or set(cleaned) == {"_"}:
        return fallback
    stem, dot, suffix = cleaned.rpartition(".")
    if not dot or len(suffix.encode()) > 16:
        stem, suffix = cleaned, ""
    while len(cleaned.encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
        cleaned = f"{stem}.{suffix}" if suffix else stem
    return cleaned


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem-2.ext``, ``stem-3.ext``... if it is taken; the result is added to ``taken``."""
    candidate = name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    n = 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}.{suffix}" if suffix else f"{stem}-{n}"
    taken.add(candidate)
    return candidate


def content_type_for(name: str) -> str:
    """The MIME type a file is served with, from its name."""
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def upload_location(file_id: str, name: str) -> str:
    return f"{UPLOADS_PREFIX}/{file_id}/{name}"


def output_location(job_id: str, name: str) -> str:
    return f"{OUTPUTS_PREFIX}/{job_id}/{name}"


def output_url(base_url: str, job_id: str, name: str) -> str:
    """Where a caller downloads an output file: ``{base}/jobs/{job_id}/files/{name}``."""
    return f"{base_url}/jobs/{job_id}/files/{quote(name, safe='/')}"


def is_hex_id(value: str) -> bool:
    """Whether ``value`` has the shape of a file id or a job id (32 lowercase hex digits)."""
    return bool(_FILE_ID.match(value))


class UploadRecord(BaseModel):
    """An uploaded input file, as the gateway records it (``keys.upload_key``) for the workers."""

    file_id: str
    name: str
    size: int
    content_type: str
    location: str
    created_ms: int

    def to_hash(self) -> dict[str, bytes]:
        return {name: orjson.dumps(value) for name, value in self.model_dump(mode="json").items()}

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> "UploadRecord":
        return cls.model_validate({k.decode(): orjson.loads(v) for k, v in fields.items()})
