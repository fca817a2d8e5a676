"""Structured logging: one JSON object a line, with the job id on every line about a job.

The job id (and the job's prefab, version, function and worker) travel in context variables, set
by the worker around a job, so library and prefab code log with plain ``logger.info`` and still get
them. Fields a line passes with ``extra=`` (:data:`JOB_FIELDS`: ``event``, ``outcome``,
``duration_s``...) become keys of its JSON object. While a job runs, :class:`LineWriter` stands in
for ``sys.stdout``/``sys.stderr`` so a prefab's ``print`` output becomes log lines of the job.
"""

import contextvars
import io
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


class LineWriter(io.TextIOBase):
    """A text stream that logs each complete line it is given (a prefab's ``print`` output) as a record."""

    def __init__(self, logger: logging.Logger, level: int, stream: str) -> None:
        super().__init__()
        self.logger = logger
        self.level = level
        self.stream = stream
        self.pending = ""

    encoding = "utf-8"  # what code reading sys.stdout.encoding expects to find

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.logger.log(self.level, "%s", line, extra={"stream": self.stream})
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.logger.log(self.level, "%s", self.pending, extra={"stream": self.stream})
            self.pending = ""


@contextmanager
def captured_output(logger: logging.Logger) -> Iterator[None]:
    """Within the block, ``print`` (stdout) and stderr writes become log lines (INFO / WARNING) of ``logger``."""
    out, err = LineWriter(logger, logging.INFO, "stdout"), LineWriter(logger, logging.WARNING, "stderr")
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        out.flush()
        err.flush()
        sys.stdout, sys.stderr = saved
