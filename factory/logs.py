"""Structured logging: one JSON object a line, with the job id on every line about a job.

The job id (and the job's prefab, version, function and worker) travel in context variables, set
by the worker around a job, so library and prefab code log with plain ``logger.info`` and still get
them. Fields a line passes with ``extra=`` (:data:`JOB_FIELDS`: ``event``, ``outcome``,
``duration_s``...) become keys of its JSON object. A prefab's own output (``print``, ``logging``)
comes from its runner process and is logged by the work horse as lines of the job
(``worker.runners``).
"""

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
current_job_fields: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "job_fields", default=None
)

# Keys a log line may carry besides its message: passed with ``extra=`` or set by :func:`job_context`.
JOB_FIELDS = (
    "event",
    "prefab_id",
    "version",
    "function",
    "worker",
    "attempt",
    "outcome",
    "error_code",
    "duration_s",
    "status",
    "queue",
    "stream",
)


def _job_fields(record: logging.LogRecord) -> dict[str, object]:
    fields = dict(current_job_fields.get() or {})
    for name in JOB_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "process": self.process_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or current_job_id.get()
        if job_id:
            line["job_id"] = job_id
        line.update(_job_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__(f"%(asctime)s {process_name} %(levelname)s %(name)s%(job)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None) or current_job_id.get()
        event = getattr(record, "event", None)
        record.job = (f" job={job_id}" if job_id else "") + (f" [{event}]" if event else "")
        return super().format(record)


def configure(process_name: str, level: str, as_json: bool) -> None:
    """Send every log record to stderr, formatted for this process."""
    # No line says where it was logged from, in which thread or process (its process is its
    # ``process`` name): records skip looking those up, a stack walk and two system calls a line
    # (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if as_json else TextFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@contextmanager
def job_context(job_id: str, **fields: object) -> Iterator[None]:
    """Tag every log line inside the block with ``job_id`` and the given :data:`JOB_FIELDS`."""
    token = current_job_id.set(job_id)
    fields_token = current_job_fields.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        current_job_fields.reset(fields_token)
        current_job_id.reset(token)
