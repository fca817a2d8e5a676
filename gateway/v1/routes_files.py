"""``/internal/files/...``: the ecosystem's file endpoints, exactly as its client calls them (``gateway.v1.files``).

The signed ``PUT`` and ``GET`` URLs (``/internal/files/put/...``, ``/internal/files/blob/...``)
need no credentials: their signature is the credential. Every other route names its caller.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from factory.errors import ValidationFailed
from gateway.deps import StateDep
from gateway.routes_files import content_disposition
from gateway.v1.caller import CallerDep
from gateway.v1.deps import EcosystemDep
from gateway.v1.files import BLOB_PREFIX, PUT_PREFIX, SESSION_PATTERN, check_session, expires_from, upload_ref
from gateway.v1.schemas import (
    ECOSYSTEM_ERRORS,
    CleanupResult,
    FileListing,
    PresignedUrl,
    StoredUpload,
    UploadUrl,
    UploadUrlBody,
)

router = APIRouter(tags=["ecosystem files"], responses=ECOSYSTEM_ERRORS)


def _multipart(**fields: dict[str, str]) -> dict[str, Any]:
    properties = {"file": {"type": "string", "format": "binary"}, **fields}
    schema = {"type": "object", "properties": properties, "required": ["file"]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_UPLOAD = _multipart()
_UPLOAD_TEMP = _multipart(
    # No "type" on either: a multipart field is text, so "0" is the whole number 0 and digits are as
    # good a session id as letters; the patterns say what is accepted.
    ttl={"pattern": "^[0-9]+$", "description": "whole seconds to keep the file (at most the retention)"},
    session_id={"pattern": SESSION_PATTERN, "description": "groups temporary files for cleanup_temp"},
)
Limit = Annotated[int, Query(ge=1, le=1000)]


def _base_url(state: StateDep, http: Request) -> str:
    return (state.settings.public_url or str(http.base_url)).rstrip("/")


@router.post("/internal/files/generate_upload_url", response_model=UploadUrl)
async def generate_upload_url(
    body: UploadUrlBody, http: Request, state: StateDep, ecosystem: EcosystemDep, caller: CallerDep
) -> UploadUrl:
    """A URL to ``PUT`` an input file's bytes to, and the reference to give in a call's ``files``."""
    url, ref = await ecosystem.files.upload_url(_base_url(state, http), body.filename, body.content_type)
    return UploadUrl(upload_url=url, s3_url=ref)


@router.put(PUT_PREFIX + "/{file_id}/{name}", status_code=200, response_class=Response)
async def put_upload(
    file_id: str, name: str, http: Request, ecosystem: EcosystemDep, expires: str = "", signature: str = ""
) -> Response:
    """The signed upload URL: stores the body as the file."""
    ecosystem.files.signer.verify("PUT", f"{PUT_PREFIX}/{file_id}/{name}", expires_from(expires), signature)
    await ecosystem.files.receive_put(http, file_id, name)
    return Response(status_code=200)


@router.get(
    BLOB_PREFIX + "/{file_id}/{name}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def get_blob(
    file_id: str, name: str, ecosystem: EcosystemDep, expires: str = "", signature: str = ""
) -> StreamingResponse:
    """The signed download URL of an uploaded file."""
    ecosystem.files.signer.verify("GET", f"{BLOB_PREFIX}/{file_id}/{name}", expires_from(expires), signature)
    record, chunks = await ecosystem.files.open_upload(file_id)
    headers = {
        "Content-Length": str(record.size),
        "Content-Disposition": content_disposition(record.name),
        "X-Content-Type-Options": "nosniff",
    }
    return StreamingResponse(chunks, media_type=record.content_type, headers=headers)


@router.post("/internal/files/upload", response_model=StoredUpload, openapi_extra=_UPLOAD)
async def upload(http: Request, state: StateDep, ecosystem: EcosystemDep, caller: CallerDep) -> StoredUpload:
    """Upload a file (multipart ``file``), kept for the retention."""
    record = await state.files.accept_upload(http)
    await ecosystem.files.track(caller.id, "permanent", record.file_id, state.settings.retention_s)
    return StoredUpload(s3_url=upload_ref(record.file_id), filename=record.name, size=record.size)


@router.post("/internal/files/upload_temp", response_model=StoredUpload, openapi_extra=_UPLOAD_TEMP)
async def upload_temp(http: Request, state: StateDep, ecosystem: EcosystemDep, caller: CallerDep) -> StoredUpload:
    """Upload a temporary file (multipart ``file``, form ``ttl`` in seconds and ``session_id``)."""
    spooled = await ecosystem.files.receive_multipart(http)
    try:
        session_id = spooled.fields.get("session_id")
        if session_id is not None:
            check_session(session_id)
        ttl_s = ecosystem.files.temp_ttl(spooled.fields.get("ttl"))
        record = await state.files.keep(spooled, ttl_s=ttl_s)
    finally:
        spooled.path.unlink(missing_ok=True)
    await ecosystem.files.track(caller.id, "temp", record.file_id, ttl_s, session_id)
    return StoredUpload(s3_url=upload_ref(record.file_id), filename=record.name, size=record.size)


@router.get("/internal/files/download", response_model=PresignedUrl)
async def download(
    http: Request,
    state: StateDep,
    ecosystem: EcosystemDep,
    caller: CallerDep,
    s3_url: str,
    mode: str = "presigned",
    expires_in: Annotated[int, Query(ge=1, le=7 * 24 * 3600)] = 3600,
) -> PresignedUrl:
    """A URL that a plain ``GET`` downloads the file from (an upload reference or an output URL)."""
    if mode != "presigned":
        raise ValidationFailed("only mode=presigned is supported")
    url = await ecosystem.files.download_url(_base_url(state, http), s3_url, state.auth, expires_in)
    return PresignedUrl(presigned_url=url)


@router.get("/internal/files/list", response_model=FileListing)
async def list_files(
    ecosystem: EcosystemDep, caller: CallerDep, limit: Limit = 100, continuation_token: str | None = None
) -> FileListing:
    """The caller's files uploaded with ``/internal/files/upload`` that have not expired."""
    return await ecosystem.files.listing(caller.id, "permanent", None, limit, continuation_token)


@router.get("/internal/files/list_temp", response_model=FileListing)
async def list_temp_files(
    ecosystem: EcosystemDep,
    caller: CallerDep,
    session_id: str | None = None,
    limit: Limit = 100,
    continuation_token: str | None = None,
) -> FileListing:
    """The caller's temporary files (of one session, if given) that have not expired."""
    session = check_session(session_id) if session_id else None
    return await ecosystem.files.listing(caller.id, "temp", session, limit, continuation_token)


@router.delete("/internal/files/cleanup_temp", response_model=CleanupResult)
async def cleanup_temp(ecosystem: EcosystemDep, caller: CallerDep, session_id: str) -> CleanupResult:
    """Delete every temporary file of the session now."""
    return CleanupResult(deleted_count=await ecosystem.files.cleanup(caller.id, check_session(session_id)))
