"""Files: ``POST /files`` (upload an input file) and ``GET /jobs/{id}/files/{name}`` (an output)."""

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from factory.filerefs import UPLOAD_SCHEME
from gateway.deps import StateDep
from gateway.schemas import ErrorResponse, UploadedFile

router = APIRouter(tags=["files"])


@router.post(
    "/files",
    status_code=201,
    response_model=UploadedFile,
    responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                }
            },
        }
    },
)
async def upload_file(http: Request, state: StateDep) -> UploadedFile:
    """Upload one input file (multipart, streamed to storage); use its ``ref`` in ``POST /invoke``'s ``files``."""
    record = await state.files.accept_upload(http)
    return UploadedFile(
        file_id=record.file_id,
        name=record.name,
        size=record.size,
        content_type=record.content_type,
        ref=f"{UPLOAD_SCHEME}://{record.file_id}",
    )


def content_disposition(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in last)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(last, safe='')}"


@router.get(
    "/jobs/{job_id}/files/{name:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorResponse}},
)
async def job_file(job_id: str, name: str, state: StateDep) -> StreamingResponse:
    """An output file of the job, for as long as the job's retention lasts."""
    output = await state.files.open_output(job_id, name)
    headers = {
        "Content-Length": str(output.file.size),
        "Content-Disposition": content_disposition(output.file.name),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
    }
    return StreamingResponse(output.chunks, media_type=output.file.content_type, headers=headers)
