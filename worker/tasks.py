"""The RQ job function the gateway enqueues by dotted path: ``worker.tasks.run_invocation``.

Jobs are real RQ jobs, but the factory's worker (``worker.engine``) does not run them through
RQ: it reads the request from the RQ job and hands it to its work horse, after claiming the job.
The function exists so the job names something real; it refuses to run under a plain
``rq worker``, which would take the job without claiming it (no heartbeat, nobody to settle it).
"""


def run_invocation(payload: dict[str, object]) -> None:
    """Refuse: factory jobs run only in the factory's own workers."""
    raise RuntimeError("factory jobs are run by `factory worker` (python -m worker), not by `rq worker`")


TASK = f"{run_invocation.__module__}.{run_invocation.__qualname__}"
