"""The RQ job function every factory job names: ``factory.rqtask.run_invocation`` (:data:`TASK`).

RQ stores a job's function as a dotted path. The core owns the function it names, so the one who
enqueues (``factory.enqueue``) and the worker that checks the name (``worker.rqjobs``) both import
:data:`TASK` from here instead of spelling a module of another package as a string.

Jobs are real RQ jobs, but the factory's worker (``worker.engine``) does not run them through
RQ: it reads the request from the RQ job and hands it to its work horse, after claiming the job.
The function exists so the job names something real; it refuses to run under a plain
``rq worker``, which would take the job without claiming it (no heartbeat, nobody to settle it).
"""


def run_invocation(payload: dict[str, object]) -> None:
    """Refuse: factory jobs run only in the factory's own workers."""
    raise RuntimeError("factory jobs are run by `factory worker` (python -m worker), not by `rq worker`")


TASK = f"{run_invocation.__module__}.{run_invocation.__qualname__}"
