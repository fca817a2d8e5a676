"""The HTTP contract: request and response bodies, apart from the internal records."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic_core import PydanticCustomError

from factory.deployments import Deployment, DeploymentSource, DeploymentState
from factory.events import ErrorInfo
from factory.jobs import JobRecord, JobStatus

# The most retries a caller may ask for (a manifest allows as many).
MAX_RETRIES = 10

_J = TypeVar("_J")


def _strict_json(value: _J) -> _J:
    """Refuse what Python's JSON parser lets through but JSON forbids: NaN, Infinity, lone surrogates.

    They would otherwise be enqueued and fail later, far from the caller (in an error message
    that cannot be encoded, or in the worker). The error type makes it a 400 like other bad JSON.
    """
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError as exc:
        raise PydanticCustomError("json_invalid", "a string is not valid Unicode (it holds a lone surrogate)") from exc
    except ValueError as exc:
        raise PydanticCustomError("json_invalid", "NaN and Infinity are not JSON numbers") from exc
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_strict_json)]
FileGroups = Annotated[dict[str, list[str]], AfterValidator(_strict_json)]


class CallBody(BaseModel):
    """What every invoke form carries: the inputs (``parameters`` is the ecosystem's name), files, retries."""

    model_config = ConfigDict(extra="forbid")

    inputs: JsonObject | None = None
    parameters: JsonObject | None = None
    files: FileGroups = Field(default_factory=dict)
    version: str | None = Field(
        default=None, max_length=64, description="the prefab version to run (default: the newest ready one)"
    )
    retries: Annotated[int, Strict()] | None = Field(  # strict: true is not 1
        default=None,
        ge=0,
        le=MAX_RETRIES,
        description="times the job is run again after an uncaught exception or a lost worker "
        "(default: the function's manifest `retries`)",
    )

    @model_validator(mode="after")
    def _one_inputs(self) -> "CallBody":
        if self.inputs is not None and self.parameters is not None:
            raise ValueError("give either inputs or parameters, not both")
        return self

    @property
    def call_inputs(self) -> dict[str, Any]:
        return self.inputs if self.inputs is not None else (self.parameters or {})


class InvokeBody(CallBody):
    """``POST /invoke``: which function, and the call."""

    prefab_id: str | None = Field(default=None, max_length=128)
    function_name: str = Field(max_length=128)


class SeedInvokeBody(CallBody):
    """``POST /invoke/{function}``: the seed's form, ``{"inputs": {...}}``; the function is in the path.

    ``_secrets`` is how the ecosystem's gateway hands a prefab runtime the caller's secrets: they
    reach this call's function ahead of the worker's own values, sealed on the way (never stored in clear).
    """

    secrets: dict[str, str] | None = Field(
        default=None,
        alias="_secrets",
        repr=False,
        description="per-call secrets, name → value, used ahead of the worker's own (never stored in clear)",
    )


class InvokeAccepted(BaseModel):
    job_id: str
    status: JobStatus
    events_url: str
    status_url: str
    token: str | None = Field(default=None, description="opens this job's events only (?token=)")


def _iso(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


class JobView(BaseModel):
    """``GET /jobs/{id}``."""

    job_id: str
    prefab_id: str
    function_name: str
    version: str | None = Field(default=None, description="the prefab version that serves the call")
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None
    attempt: int = 0
    output: Any = None
    error: ErrorInfo | None = None
    files: dict[str, list[str]] | None = None
    last_event_id: int

    @classmethod
    def from_record(cls, record: JobRecord, last_event_id: int) -> "JobView":
        return cls(
            job_id=record.job_id,
            prefab_id=record.prefab_id,
            function_name=record.function_name,
            version=record.version,
            status=record.status,
            created_at=_iso(record.created_ms) or datetime.now(UTC),
            started_at=_iso(record.started_ms),
            ended_at=_iso(record.ended_ms),
            worker=record.worker,
            attempt=record.attempt,
            output=record.output,
            error=record.error,
            files=record.files,
            last_event_id=last_event_id,
        )


class RuntimeResult(BaseModel):
    """The ecosystem runtime's answer to a non-streaming ``POST /invoke/{function}``, once the job ends.

    ``status`` is ``SUCCESS`` or ``FAILED``; ``job_id`` and ``error`` ride along as extensions.
    """

    status: str
    output: Any = None
    files: dict[str, list[str]] = Field(default_factory=dict)
    job_id: str
    error: ErrorInfo | None = None

    @classmethod
    def from_record(cls, record: JobRecord) -> "RuntimeResult":
        return cls(
            status="SUCCESS" if record.status is JobStatus.FINISHED else "FAILED",
            output=record.output,
            files=record.files or {},
            job_id=record.job_id,
            error=record.error,
        )


class UploadedFile(BaseModel):
    """``POST /files``: the stored upload; pass ``ref`` in a call's ``files``."""

    file_id: str
    name: str = Field(description="the sanitised file name it gets in data/inputs/<group>/")
    size: int
    content_type: str
    ref: str = Field(description="upload://<file_id>")


class JobList(BaseModel):
    jobs: list[JobView]


class VersionView(BaseModel):
    """One deployed version of a prefab."""

    version: str
    state: DeploymentState
    reason: str | None = Field(default=None, description="why it failed to deploy")
    deployment_id: str
    source: DeploymentSource
    deployed_at: datetime
    functions: list[str]


class PrefabSummary(BaseModel):
    """A prefab: its newest version's description, and every live version with its state."""

    id: str | None
    status: Literal["ready", "building", "failed", "broken"] = Field(
        description="its default version's state, or broken (a configured folder that cannot be served)"
    )
    version: str | None = Field(default=None, description="the version a call without one runs")
    name: str | None = None
    description: str | None = None
    functions: list[str] = Field(default_factory=list)
    versions: list[VersionView] = Field(default_factory=list)
    path: str | None = Field(default=None, description="the folder, for a prefab run in place or broken")
    problems: list[str] = Field(default_factory=list)


class PrefabList(BaseModel):
    prefabs: list[PrefabSummary]


class DeploymentView(BaseModel):
    """``GET /v1/deployments/{id}``: a deployment, observable like a job."""

    deployment_id: str
    prefab_id: str
    version: str
    state: DeploymentState
    reason: str | None = None
    source: DeploymentSource
    created_at: datetime
    updated_at: datetime
    job_id: str | None = Field(default=None, description="the build's job: its events are the deployment's steps")
    events_url: str | None = None

    @classmethod
    def from_deployment(cls, deployment: Deployment, events_url: str | None) -> "DeploymentView":
        return cls(
            deployment_id=deployment.deployment_id,
            prefab_id=deployment.prefab_id,
            version=deployment.version,
            state=deployment.state,
            reason=deployment.reason,
            source=deployment.source,
            created_at=_iso(deployment.created_ms) or datetime.now(UTC),
            updated_at=_iso(deployment.updated_ms) or datetime.now(UTC),
            job_id=deployment.job_id,
            events_url=events_url,
        )


class DeploymentList(BaseModel):
    deployments: list[DeploymentView]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
