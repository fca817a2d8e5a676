"""Builds a deployment: its environment, the import of its code, the manifest checked against it.

Runs as the job of a deployment (``kind="deploy"``) in a work horse, so its steps are that job's
events, streamed and resumable like any job's, and a builder that dies is reaped like any job.
Each step is a ``progress`` event (``{"step", "message", ...}``); the last event is ``done`` with
the ready deployment, or ``error`` with the reason verbatim (the resolver's or the import's
output). The deployment's record turns ``ready`` or ``failed`` in the same breath, the catalog's
version is bumped so every gateway and worker sees it, and the webhook (if any) is told.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson
import redis

from factory.deployments import Deployment, DeploymentState, encode
from factory.settings import Settings
from factory.source_check import FunctionShape, function_problems
from factory.store import keys
from factory.webhooks import WebhookSender
from worker.provision import Provisioner, ProvisionError
from worker.runners import RunnerFailed, RunnerGone

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
CHECK_TIMEOUT_S = 60.0

_STEP_MESSAGES = {
    "creating": "creating the environment",
    "resolving": "resolving dependencies",
    "installing": "installing {packages} packages",
    "installed": "dependencies installed",
    "cached": "environment already built",
    "fetching": "fetching the wheel",
}


class BuildFailed(Exception):
    """The deployment cannot run; the message is its reason."""


def _step_reporter(emit: Emit) -> Callable[[str, dict[str, Any]], None]:
    def report(step: str, detail: dict[str, Any]) -> None:
        template = _STEP_MESSAGES.get(step, step)
        try:
            message = template.format(**detail)
        except (KeyError, IndexError):
            message = template
        emit({"type": "progress", "data": {"step": step, "message": message, **detail}})

    return report


def check_code(provisioner: Provisioner, deployment: Deployment) -> list[str]:
    """Import the prefab in its runner and compare every declared function with the code."""
    runner = provisioner.runner(deployment)
    functions = deployment.manifest.functions
    try:
        runner.send({"op": "check", "functions": [f.name for f in functions]})
        reply = runner.recv(CHECK_TIMEOUT_S)
    except RunnerGone as gone:
        provisioner.discard(runner)
        raise BuildFailed(f"the prefab's process died while being checked ({gone.description})") from gone
    if reply is None or reply[:1] != b"C":
        provisioner.discard(runner)
        raise BuildFailed("the prefab's process did not answer the check")
    found = orjson.loads(reply[1:])
    problems: list[str] = []
    for spec in functions:
        raw = found.get(spec.name)
        shape = None
        if raw is not None:
            shape = FunctionShape(
                name=spec.name,
                is_async=raw["is_async"],
                is_generator=raw["is_generator"],
                params=tuple(raw["params"]),
                required=frozenset(raw["required"]),
                accepts_any_keyword=raw["accepts_any_keyword"],
            )
        problems += function_problems(spec, shape)
    return problems


def build(provisioner: Provisioner, deployment: Deployment, emit: Emit) -> dict[str, Any]:
    """Make the deployment ready; :class:`BuildFailed` with the reason when it cannot be."""
    emit({"type": "start", "data": {"deployment_id": deployment.deployment_id, "ref": deployment.ref}})
    try:
        provisioner.environment(deployment, _step_reporter(emit))
    except ProvisionError as exc:
        raise BuildFailed(str(exc)) from exc
    emit({"type": "progress", "data": {"step": "importing", "message": "importing the prefab"}})
    try:
        problems = check_code(provisioner, deployment)
    except (RunnerFailed, ProvisionError) as exc:
        raise BuildFailed(str(exc)) from exc
    emit({"type": "progress", "data": {"step": "checking", "message": "checking the manifest against the code"}})
    if problems:
        raise BuildFailed("the manifest does not match the code: " + "; ".join(problems))
    return {"deployment_id": deployment.deployment_id, "ref": deployment.ref, "state": DeploymentState.READY.value}


def record_outcome(client: redis.Redis, settings: Settings, deployment: Deployment, reason: str | None) -> Deployment:
    """Write the deployment's new state (``ready``, or ``failed`` with ``reason``) unless it was retired meanwhile."""
    raw: bytes | None = client.hget(keys.deployments_key(), deployment.deployment_id)  # type: ignore[assignment]
    current = Deployment.model_validate_json(raw) if raw is not None else deployment
    if current.state is DeploymentState.RETIRED:
        return current
    state = DeploymentState.READY if reason is None else DeploymentState.FAILED
    updated = current.with_state(state, reason)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.deployments_key(), deployment.deployment_id, encode(updated))
        pipe.incr(keys.deployments_version_key())
        pipe.execute()
    notify(settings, "deployment.success" if reason is None else "deployment.failed", updated)
    return updated


def notify(settings: Settings, event: str, deployment: Deployment) -> None:
    """POST the deployment event to the configured webhook (retried with backoff), if any."""
    if not settings.deploy_webhook_url:
        return
    sender = WebhookSender(settings.deploy_webhook_url, settings.deploy_webhook_secret)
    payload = {
        "deployment_id": deployment.deployment_id,
        "prefab_id": deployment.prefab_id,
        "version": deployment.version,
        "state": deployment.state.value,
        "reason": deployment.reason,
        "manifest": deployment.manifest.model_dump(mode="json", by_alias=True, exclude_none=True),
    }

    def deliver() -> None:
        if not sender.send(event, payload):
            logger.error("webhook %s for %s was not delivered", event, deployment.ref)

    # Off the build's path: a slow or failing receiver never delays the deployment's events.
    threading.Thread(target=deliver, name=f"webhook-{event}", daemon=True).start()
