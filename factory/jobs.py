"""Job records and the enqueued request: the shapes that cross process boundaries.

A job's record is one Redis hash (``keys.job_key``) whose values are JSON; the gateway
creates it, the worker marks it started, and the atomic append script (``eventlog``) writes
its terminal fields in the same step as its terminal event. ``last_event_id`` is never
stored: it is the length of the event log.
"""

import secrets
import time
import uuid
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from factory.events import ErrorInfo


def new_job_id() -> str:
    """An unguessable job id: 122 random bits (a UUID4), as 32 hex digits."""
    return uuid.uuid4().hex


def new_file_id() -> str:
    """An unguessable id for an uploaded file."""
    return secrets.token_hex(16)


def now_ms() -> int:
    return int(time.time() * 1000)


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED)


class InvocationRequest(BaseModel):
    """What the gateway enqueues for a worker: everything needed to run the call."""

    job_id: str
    prefab_id: str
    function_name: str
    version: str = ""
    deployment_id: str = Field(default="", description="the deployment it runs on, to its end")
    kind: Literal["call", "deploy"] = "call"  # deploy: the job builds its deployment (``worker.builder``)
    inputs: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, list[str]] = Field(default_factory=dict)
    timeout_s: float
    retries: int = 0
    created_ms: int
    # The caller's secrets for this call, as one Fernet token (factory.sealing); never in clear.
    sealed_secrets: str | None = Field(default=None, repr=False)


class StoredFile(BaseModel):
    """An output file kept for the caller: where it is and how to serve it."""

    name: str
    url: str
    size: int
    content_type: str
    location: str = Field(description="storage-internal address, never shown to callers")


class JobRecord(BaseModel):
    """The job as stored; the gateway turns it into the public view."""

    job_id: str
    prefab_id: str
    function_name: str
    version: str | None = None  # the prefab version that serves the call
    status: JobStatus
    created_ms: int
    started_ms: int | None = None
    ended_ms: int | None = None
    worker: str | None = None
    attempt: int = 0
    output: Any = None
    error: ErrorInfo | None = None
    files: dict[str, list[str]] | None = None
    streaming: bool = False

    def to_hash(self) -> dict[str, bytes]:
        """Field → JSON value, for HSET."""
        return {name: orjson.dumps(value) for name, value in self.model_dump(mode="json").items()}

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> "JobRecord":
        """Inverse of :meth:`to_hash`; bookkeeping fields of the append script are ignored."""
        known = cls.model_fields
        values = {k.decode(): orjson.loads(v) for k, v in fields.items() if k.decode() in known}
        return cls.model_validate(values)


def terminal_fields(status: JobStatus, ended_ms: int, output: Any, error: ErrorInfo | None) -> dict[str, bytes]:
    """The record fields written together with a terminal event."""
    return {
        "status": orjson.dumps(status.value),
        "ended_ms": orjson.dumps(ended_ms),
        "output": orjson.dumps(output),
        "error": orjson.dumps(error.model_dump() if error else None),
    }
