"""FactoryWorker: RQ's forking worker, taught what a lost work horse means for a stream.

RQ already isolates each job in a forked work horse and notices when one dies; this subclass
adds the factory's side of it: the job's stream gets its terminal ``WORKER_LOST`` (unless the
job already ended, e.g. it was canceled and killed on purpose), and the horse's workspace is
removed even though the horse could not do it itself.
"""

import logging
from typing import Any

from rq import Queue, Worker
from rq.job import Job

from factory.eventlog import APPEND_LUA, append_keys, parse_append, terminal_error_args
from factory.events import WORKER_LOST
from worker.runner import WorkerRuntime
from worker.workspace import Workspace

logger = logging.getLogger(__name__)


class FactoryWorker(Worker):
    runtime: WorkerRuntime

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            Workspace(self.runtime.settings.state_dir, job.id).remove()

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]
        message = f"the work horse running this job died (exit status {ret_val})"
        script = self.runtime.redis.register_script(APPEND_LUA)
        args = terminal_error_args(WORKER_LOST, message, retention_s=self.runtime.settings.retention_s)
        result = parse_append(script(keys=append_keys(job.id), args=args))
        logger.warning("work horse died: %s (append: %s)", message, result.outcome.name, extra={"job_id": job.id})
