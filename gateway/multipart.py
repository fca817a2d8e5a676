"""Reads the one file of a ``multipart/form-data`` upload to a temporary file, as it arrives.

Starlette's ``request.form()`` would read the whole body before anything could check its size;
this feeds the body chunk by chunk to python-multipart's streaming parser, writes the file
part's bytes to disk (in a thread) and stops with 413 as soon as the file passes the limit. A
body carries exactly one file part (any field name); other fields are kept as text (the first
:data:`FIELD_BYTES` of each, e.g. ``ttl`` and ``session_id`` of ``/internal/files/upload_temp``),
and together with the multipart framing may add at most :data:`FRAMING_BYTES` to the body.
"""

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from factory.errors import BadRequest, PayloadTooLarge
from gateway.numbers import whole_number

if TYPE_CHECKING:  # defined for type checkers only
    from python_multipart.multipart import MultipartCallbacks

FRAMING_BYTES = 64 * 1024
FIELD_BYTES = 1024


@dataclass(frozen=True)
class SpooledUpload:
    path: Path
    filename: str
    content_type: str | None
    size: int
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Collector:
    """python-multipart callbacks: keep the file part's bytes, count them, drop everything else."""

    max_bytes: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_name: bytes = b""
    header_value: bytes = b""
    in_file: bool = False
    found: bool = False
    filename: str = ""
    content_type: str | None = None
    size: int = 0
    pending: list[bytes] = field(default_factory=list)
    field_name: str | None = None
    field_value: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)

    def callbacks(self) -> "MultipartCallbacks":
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition"))
        if b"filename" not in options:
            name = options.get(b"name")
            self.field_name = name.decode("utf-8", errors="replace") if name else None
            self.field_value = b""
            return
        if self.found:
            raise BadRequest("POST /files takes one file per request")
        self.found = self.in_file = True
        self.filename = options[b"filename"].decode("utf-8", errors="replace")
        declared = self.headers.get(b"content-type", b"").decode("latin-1").strip()
        self.content_type = declared or None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.size += end - start
            if self.size > self.max_bytes:
                raise PayloadTooLarge(f"the file exceeds the limit of {self.max_bytes} bytes")
            self.pending.append(data[start:end])
        elif self.field_name is not None and len(self.field_value) < FIELD_BYTES:
            self.field_value = (self.field_value + data[start:end])[:FIELD_BYTES]

    def on_part_end(self) -> None:
        if self.field_name is not None:
            self.fields[self.field_name] = self.field_value.decode("utf-8", errors="replace")
            self.field_name = None
        self.in_file = False


def _boundary(request: Request) -> bytes:
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadRequest("POST /files takes a multipart/form-data body with one file part (curl -F file=@path)")
    return params[b"boundary"]


def _check_declared_length(request: Request, max_body: int) -> None:
    declared = whole_number(request.headers.get("content-length"))
    if declared is not None and declared > max_body:
        raise PayloadTooLarge(f"the upload exceeds the limit of {max_body - FRAMING_BYTES} bytes")


async def receive_upload(request: Request, spool_dir: Path, max_bytes: int) -> SpooledUpload:
    """Write the request's file part to a new file in ``spool_dir``; the caller removes it."""
    boundary = _boundary(request)
    max_body = max_bytes + FRAMING_BYTES
    _check_declared_length(request, max_body)
    collector = _Collector(max_bytes)
    parser = MultipartParser(boundary, collector.callbacks())
    await asyncio.to_thread(spool_dir.mkdir, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="upload-")
    path = Path(name)
    sink = os.fdopen(fd, "wb")
    try:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise PayloadTooLarge(f"the upload exceeds the limit of {max_bytes} bytes")
            parser.write(chunk)
            if collector.pending:
                data = b"".join(collector.pending)
                collector.pending.clear()
                await asyncio.to_thread(sink.write, data)
        parser.finalize()
    except FormParserError as exc:
        sink.close()
        path.unlink(missing_ok=True)
        raise BadRequest("the multipart body is malformed") from exc
    except BaseException:
        sink.close()
        path.unlink(missing_ok=True)
        raise
    await asyncio.to_thread(sink.close)
    if not collector.found:
        path.unlink(missing_ok=True)
        raise BadRequest("the multipart body has no file part (curl -F file=@path)")
    return SpooledUpload(path, collector.filename, collector.content_type, collector.size, collector.fields)
