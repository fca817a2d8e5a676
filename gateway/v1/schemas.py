"""The ecosystem gateway's HTTP shapes, as its published client (``agent-builder-gateway-sdk``) sends and reads them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.schemas import FileGroups, JsonObject

MAX_CALLS = 100


class RunInputs(BaseModel):
    parameters: JsonObject = Field(default_factory=dict)
    files: FileGroups = Field(default_factory=dict)


class RunCall(BaseModel):
    prefab_id: str = Field(max_length=128)
    version: str = Field(max_length=64)
    function_name: str = Field(max_length=128)
    inputs: RunInputs = Field(default_factory=RunInputs)


class RunBody(BaseModel):
    """``POST /v1/run``: the calls, run one after another."""

    model_config = ConfigDict(extra="ignore")

    calls: list[RunCall] = Field(min_length=1, max_length=MAX_CALLS)


class RuntimeOutput(BaseModel):
    """A successful call's output, in the prefab runtime's shape."""

    status: Literal["SUCCESS"] = "SUCCESS"
    output: Any = None
    files: dict[str, list[str]] = Field(default_factory=dict)


class CallError(BaseModel):
    message: str
    type: str = Field(description="the factory's error code (UNEXPECTED_ERROR, TIMEOUT, MISSING_SECRET...)")


class CallResult(BaseModel):
    status: Literal["SUCCESS", "FAILED"]
    output: RuntimeOutput | None = None
    error: CallError | None = None
    job_id: str = Field(description="this call's own job (GET /jobs/{job_id}); an extension")


class RunResult(BaseModel):
    job_id: str = Field(description="the first call's job")
    status: Literal["COMPLETED", "PARTIAL_SUCCESS"]
    results: list[CallResult]


class InternalToken(BaseModel):
    internal_token: str


class SecretBody(BaseModel):
    prefab_id: str = Field(max_length=128)
    secret_name: str = Field(max_length=128, pattern=r"^[A-Z0-9_]+$")
    secret_value: str = Field(max_length=64 * 1024, repr=False)


class SecretNames(BaseModel):
    prefab_id: str
    secret_names: list[str]


class UploadUrlBody(BaseModel):
    filename: str = Field(max_length=1024)
    content_type: str | None = Field(default=None, max_length=256)


class UploadUrl(BaseModel):
    upload_url: str = Field(description="PUT the file's bytes here, before it expires")
    s3_url: str = Field(description="the reference to give in a call's files (upload://<id>)")


class StoredUpload(BaseModel):
    success: bool = True
    s3_url: str
    filename: str
    size: int


class PresignedUrl(BaseModel):
    presigned_url: str


class FileEntry(BaseModel):
    key: str
    size: int
    last_modified: str
    s3_url: str


class FileListing(BaseModel):
    files: list[FileEntry]
    next_token: str | None = None


class CleanupResult(BaseModel):
    deleted_count: int


class ErrorDetail(BaseModel):
    """The ecosystem's error: a code, a message and whatever the code adds (``limit``, ``secret_name``...)."""

    model_config = ConfigDict(extra="allow")

    error_code: str
    message: str


class EcosystemError(BaseModel):
    detail: ErrorDetail


ECOSYSTEM_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": EcosystemError} for status in (400, 401, 403, 404, 413, 415, 422, 429, 500, 503)
}
