"""The field names of the hashes the factory writes: a job's record, and RQ's hash of the same job.

A record (``keys.job_key``) holds :class:`factory.jobs.JobRecord`'s fields, each a JSON value, and
the bookkeeping fields of the scripts (``factory.store.scripts``), which :meth:`JobRecord.from_hash`
ignores. RQ's job hash (``keys.rq_job_key``) is RQ's format; the factory reads and writes only the
fields named here (``tests/test_rq_contract.py`` checks them against the installed RQ). The Lua
scripts spell the same names as literals.
"""

# A job's record: what JobRecord carries (JSON values).
STATUS = "status"
CREATED_MS = "created_ms"
STARTED_MS = "started_ms"
ENDED_MS = "ended_ms"
WORKER = "worker"
ATTEMPT = "attempt"
OUTPUT = "output"
ERROR = "error"
FILES = "files"
# A job's record: the scripts' bookkeeping (raw values, never JSON).
EXECUTION = "execution"  # the token of the execution that owns the job; ``retry:<token>`` once it handed it on
TERMINAL = "terminal"  # "1" once the terminal event is in the log: nothing more is appended
BATCH = "batch"  # the id of the last batch appended (``<id>:limit`` when it hit the event limit)

BOOKKEEPING = (EXECUTION, TERMINAL, BATCH)

# RQ's job hash.
RQ_DATA = "data"  # the call: function, args, kwargs, as the serializer wrote them
RQ_TIMEOUT = "timeout"
RQ_CREATED_AT = "created_at"
RQ_ENQUEUED_AT = "enqueued_at"
RQ_STATUS = "status"
RQ_ORIGIN = "origin"  # the queue's name
RQ_STARTED_AT = "started_at"
RQ_ENDED_AT = "ended_at"
RQ_WORKER_NAME = "worker_name"

# RQ's worker hash.
RQ_WORKER_STATE = "state"
RQ_WORKER_CURRENT_JOB = "current_job"
