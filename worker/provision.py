"""From a deployment id to a running prefab process: the record, the environment, the runner.

A worker never needs a catalog to run a job: the request names its deployment, whose record
(``factory.deployments``) is read from Redis once and kept (a record's content never changes
but for its state, and a retired deployment still runs the jobs queued on it). Its environment
is built on first need on this machine (``worker.environments``, cached by content, shared by
every worker of the machine), from the wheel fetched out of the factory's storage or, for a
folder deployment, from the folder's declared dependencies; then the horse's
:class:`worker.runners.RunnerPool` starts the runner.
"""

import logging
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from factory.deployments import Deployment, DeploymentSource
from factory.settings import Settings
from factory.storage import Storage, StorageError
from factory.store import keys
from worker.environments import Environment, EnvironmentBuildError, Environments, environment_key, python_tag
from worker.runners import Runner, RunnerPool, RunnerSpec

logger = logging.getLogger(__name__)

StepReporter = Callable[[str, dict[str, Any]], None]


class ProvisionError(Exception):
    """The deployment cannot be made runnable here: why, verbatim."""


def _log_step(step: str, detail: dict[str, Any]) -> None:
    logger.info("environment: %s %s", step, detail or "")


class Provisioner:
    def __init__(self, settings: Settings, client: redis.Redis, storage: Storage, environ: dict[str, str]) -> None:
        self.settings = settings
        self.client = client
        self.storage = storage
        self.environ = environ
        python = settings.prefab_python or sys.executable
        self.environments = Environments(settings.environments_dir(), python=python)
        # Environments made from another interpreter than the factory's are keyed by that interpreter.
        self._python_tag = python_tag() if settings.prefab_python is None else f"interpreter:{Path(python).resolve()}"
        self._deployments: dict[str, Deployment] = {}
        self._pool: RunnerPool | None = None  # made in the process that runs jobs (the horse)
        self._uid_gid = _user_ids(settings.runner_user) if os.getuid() == 0 else None
        if self._uid_gid is not None:
            _close_state_dir(settings.state_dir)

    def deployment(self, deployment_id: str) -> Deployment:
        """The deployment's record (:class:`ProvisionError` when the factory has none)."""
        found = self._deployments.get(deployment_id)
        if found is None:
            raw: bytes | None = self.client.hget(keys.deployments_key(), deployment_id)  # type: ignore[assignment]
            if raw is None:
                raise ProvisionError(f"no deployment {deployment_id!r} (undeployed, and its retention ended)")
            found = Deployment.model_validate_json(raw)
            self._deployments[deployment_id] = found
        return found

    def forget(self, deployment_id: str) -> None:
        self._deployments.pop(deployment_id, None)

    def environment(self, deployment: Deployment, on_step: StepReporter = _log_step) -> Environment:
        """The deployment's environment, built here if this machine has none yet."""
        try:
            if deployment.source is DeploymentSource.FOLDER:
                key = self.environment_key(deployment)
                return self.environments.ensure(key, None, deployment.locked, on_step, deployment.requirements)
            key = self.environment_key(deployment)
            found = self.environments.find(key)
            if found is not None:
                on_step("cached", {"environment": key})
                return found
            wheel = self._local_wheel(deployment, on_step)
            return self.environments.ensure(key, wheel, deployment.locked, on_step)
        except EnvironmentBuildError as exc:
            raise ProvisionError(f"{exc}\n{exc.output}".strip()) from exc

    def _local_wheel(self, deployment: Deployment, on_step: StepReporter) -> Path:
        """The deployment's wheel on this machine, fetched from the factory's storage once."""
        name = deployment.location.rsplit("/", 1)[-1]
        local = self.environments.root / "wheels" / deployment.sha256 / name
        if local.is_file():
            return local
        on_step("fetching", {"wheel": name})
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_suffix(f".{os.getpid()}.part")
        try:
            self.storage.get_file(deployment.location, partial, self.settings.max_wheel_bytes)
            os.replace(partial, local)
        except StorageError as exc:
            partial.unlink(missing_ok=True)
            raise ProvisionError(f"cannot fetch the wheel {deployment.location}: {exc}") from exc
        return local

    def runner(self, deployment: Deployment) -> Runner:
        """A live runner for the deployment in this process (a work horse)."""
        if self._pool is None:
            self._pool = RunnerPool(self.settings.max_runners_per_horse, self.environ)
        environment = self.environment(deployment)
        memory = deployment.manifest.execution_environment
        spec = RunnerSpec(
            key=deployment.deployment_id,
            prefab_id=deployment.prefab_id,
            python=environment.python,
            code_dir=deployment.location if deployment.source is DeploymentSource.FOLDER else "",
            memory_bytes=memory.memory_limit_bytes if memory is not None else 0,
            user=(self.settings.runner_user or "") if self._uid_gid is not None else "",
        )
        return self._pool.get(spec)

    def environment_key(self, deployment: Deployment) -> str:
        """The key of the environment the deployment runs in (a folder's is made of its dependencies)."""
        return environment_key(deployment.sha256, deployment.locked, python=self._python_tag)

    def sweep_environments(self, deployments: list[Deployment], unused_for_s: float) -> list[str]:
        """Remove this machine's environments that no known deployment uses and nothing used for a while."""
        keep = {self.environment_key(d) for d in deployments}
        return self.environments.remove_unused(keep, unused_for_s)

    def discard(self, runner: Runner) -> None:
        if self._pool is not None:
            self._pool.discard(runner)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def hand_over(self, workspace: Path) -> None:
        """Give the job's workspace to the prefab's user, when runners drop to one."""
        if self._uid_gid is None:
            return
        uid, gid = self._uid_gid
        for root, dirs, files in os.walk(workspace):
            for name in (root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)):
                os.lchown(name, uid, gid)


def _user_ids(user: str | None) -> tuple[int, int] | None:
    if not user:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _close_state_dir(state_dir: Path) -> None:
    """Let the runners' user reach its own workspace and nothing else of the state folder.

    The folder and ``work/`` can be passed through but not listed (a workspace's name is its
    unguessable job id); everything else in it (Redis data, stored files) is the factory's alone.
    Environments (``envs/``) stay readable: they hold only installed packages.
    """
    work = state_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    (state_dir / "files").mkdir(mode=0o700, exist_ok=True)  # the local storage's default place
    state_dir.chmod(0o711)
    work.chmod(0o711)
    for entry in state_dir.iterdir():
        if entry.is_dir() and entry.name not in ("work", "envs"):
            entry.chmod(0o700)
