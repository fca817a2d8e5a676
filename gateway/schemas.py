"""The HTTP contract: request and response bodies, apart from the internal records."""

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.events import ErrorInfo
from factory.jobs import JobRecord, JobStatus


class InvokeBody(BaseModel):
    """``POST /invoke``: which function, with which inputs (``parameters`` is the ecosystem's name)."""

    model_config = ConfigDict(extra="forbid")

    prefab_id: str | None = Field(default=None, max_length=128)
    function_name: str = Field(max_length=128)
    inputs: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    files: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_inputs(self) -> "InvokeBody":
        if self.inputs is not None and self.parameters is not None:
            raise ValueError("give either inputs or parameters, not both")
        return self

    @property
    def call_inputs(self) -> dict[str, Any]:
        return self.inputs if self.inputs is not None else (self.parameters or {})


class SeedInvokeBody(BaseModel):
    """``POST /invoke/{function}``: the seed's form, ``{"inputs": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    files: dict[str, list[str]] = Field(default_factory=dict)

    @property
    def call_inputs(self) -> dict[str, Any]:
        return self.inputs if self.inputs is not None else (self.parameters or {})


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


class JobResult(BaseModel):
    """The ecosystem's result of a non-streaming call, once the job ends."""

    job_id: str
    status: JobStatus
    output: Any = None
    files: dict[str, list[str]] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class JobList(BaseModel):
    jobs: list[JobView]


class PrefabSummary(BaseModel):
    id: str | None
    path: str
    status: str = Field(description="loaded | broken")
    version: str | None = None
    name: str | None = None
    description: str | None = None
    functions: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)


class PrefabList(BaseModel):
    prefabs: list[PrefabSummary]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
