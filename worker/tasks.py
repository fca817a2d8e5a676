"""The single RQ entry point, enqueued by dotted path as ``worker.tasks.run_invocation``.

RQ calls it with only the JSON payload, so the worker's runtime (settings, Redis, imported
prefabs) is installed once per process by :func:`install_runtime` at worker start, before any
work horse is forked, and read here.
"""

from factory.jobs import InvocationRequest
from factory.logs import job_context
from worker.runner import InvocationRunner, WorkerRuntime

_runtime: WorkerRuntime | None = None


def install_runtime(runtime: WorkerRuntime) -> None:
    """Make the runtime available to jobs run by this process and its work horses."""
    global _runtime
    _runtime = runtime


def run_invocation(payload: dict[str, object]) -> None:
    """Run one invocation; its outcome is in its events and record, not in RQ's result."""
    if _runtime is None:
        raise RuntimeError("worker runtime not installed (start workers with `factory worker`)")
    request = InvocationRequest.model_validate(payload)
    with job_context(request.job_id):
        InvocationRunner(_runtime, request, _runtime.claims.get(request.job_id)).run()
