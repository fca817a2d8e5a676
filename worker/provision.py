"""From a deployment id to a running prefab process: the record, the environment, the runner.

A worker never needs a catalog to run a job: the request names its deployment, whose record
(``factory.deployments``) is read from Redis once and kept (a record's content never changes
but for its state, and a retired deployment still runs the jobs queued on it). Its environment
is built on first need on this machine (``worker.environments``, cached by content, shared by
every worker of the machine), from the wheel fetched out of the factory's storage or, for a
folder deployment, from the folder's declared dependencies; then the horse's
:class:`worker.runners.RunnerPool` starts the runner, confined as this machine allows
(:func:`factory.isolation.probe`, once per worker; ``worker.sandbox``): as root each deployment
runs as a uid of its own, which owns the workspaces of its jobs (mode 0700) and nothing else.
"""

import logging
import os
import pwd
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from factory.deployments import Deployment, DeploymentSource
from factory.isolation import Isolation, probe
from factory.settings import Settings
from factory.storage import Storage, StorageError
from factory.store import keys
from worker.environments import Environment, EnvironmentBuildError, Environments, environment_key, python_tag
from worker.runners import RUNNER_PATH, Runner, RunnerPool, RunnerSpec
from worker.sandbox import MountPlan, bwrap_prefix, deployment_uid, network_policy

logger = logging.getLogger(__name__)

StepReporter = Callable[[str, dict[str, Any]], None]

# How long a horse runs jobs in an environment it found before looking for it on disk again (and
# marking it used, which the sweeper reads): finding it costs two stats and a utime, once a job.
ENVIRONMENT_RECHECK_S = 60.0


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
        # A deployment's runner spec, made once: its sandbox's mount plan walks paths (~1.7 ms a job).
        self._specs: dict[tuple[str, Path], RunnerSpec] = {}
        self._found: dict[str, tuple[Environment, float]] = {}  # a deployment's environment, and when found
        self.isolation: Isolation = probe(settings)
        self._fixed_ids = _user_ids(settings.runner_user) if os.getuid() == 0 else None
        self._job_ids: tuple[int, int] | None = None  # uid, gid of the current job's runner (root only)
        if self._fixed_ids is not None or self.isolation.separate_users:
            _close_state_dir(settings.state_dir)
            if not self.isolation.private_mounts:
                _check_reachable(settings, python)
        if self.isolation.missing:
            logger.warning("prefab isolation is %s: %s", self.isolation.level, "; ".join(self.isolation.missing))

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
        self._found.pop(deployment_id, None)
        self._specs = {key: spec for key, spec in self._specs.items() if key[0] != deployment_id}

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
        environment = self._environment_to_run(deployment)
        spec = self._specs.get((deployment.deployment_id, environment.python))
        if spec is None:
            spec = self.runner_spec(deployment, environment.python)
            self._specs[(deployment.deployment_id, environment.python)] = spec
        self._job_ids = (spec.uid, spec.gid) if spec.uid >= 0 else None
        return self._pool.get(spec)

    def _environment_to_run(self, deployment: Deployment) -> Environment:
        """:meth:`environment`, looked for on disk at most every :data:`ENVIRONMENT_RECHECK_S`."""
        now = time.monotonic()
        found = self._found.get(deployment.deployment_id)
        if found is not None and now - found[1] < ENVIRONMENT_RECHECK_S:
            return found[0]
        environment = self.environment(deployment)
        self._found[deployment.deployment_id] = (environment, now)
        return environment

    def runner_spec(self, deployment: Deployment, python: Path) -> RunnerSpec:
        """How the deployment's runner is started and confined here (:class:`ProvisionError` if it cannot be)."""
        memory = deployment.manifest.execution_environment
        return runner_spec(
            self.settings,
            self.isolation,
            key=deployment.deployment_id,
            prefab_id=deployment.prefab_id,
            python=python,
            code_dir=deployment.location if deployment.source is DeploymentSource.FOLDER else "",
            memory_bytes=memory.memory_limit_bytes if memory is not None else 0,
            user_ids=self._fixed_ids,
        )

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

    def hand_over(self, workspace: Path, inputs: Path) -> None:
        """Give the job's workspace to the user its runner runs as (the last :meth:`runner` asked for).

        Mode 0700: a runner of another deployment cannot enter it, even knowing its name. The
        workspace itself is given last, so one that is that user's already (a spare the same
        deployment left untouched) with no input files in ``inputs`` needs nothing more.
        """
        if self._job_ids is None:
            return
        uid, gid = self._job_ids
        found = os.lstat(workspace)
        if (found.st_uid, found.st_gid, found.st_mode & 0o7777) == (uid, gid, 0o700) and not os.listdir(inputs):
            return
        for root, dirs, files in os.walk(workspace, topdown=False):
            for name in (*(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)):
                os.lchown(name, uid, gid)
        os.lchown(workspace, uid, gid)
        workspace.chmod(0o700)


def runner_spec(
    settings: Settings,
    isolation: Isolation,
    *,
    key: str,
    prefab_id: str,
    python: Path,
    code_dir: str,
    memory_bytes: int,
    user_ids: tuple[int, int] | None = None,
) -> RunnerSpec:
    """A runner of deployment ``key`` confined as ``isolation`` allows: its uid (``user_ids``, else its own
    when runners get separate users), its sandbox and network, its limits (none when the sandbox is off)."""
    ids = user_ids
    if ids is None and isolation.separate_users:
        ids = (deployment_uid(settings, key),) * 2
    network_none = network_policy(settings, prefab_id) == "none"
    if network_none and not isolation.network_none:
        raise ProvisionError(
            f"{prefab_id}'s network policy is `none`, which this machine cannot enforce "
            f"(isolation {isolation.level}: {'; '.join(isolation.missing)})"
        )
    sandbox: list[str] = []
    if isolation.bwrap is not None:
        (settings.state_dir / "work").mkdir(parents=True, exist_ok=True)
        plan = MountPlan(python, code_dir, settings.state_dir, RUNNER_PATH, settings.runner_tmp_bytes)
        as_root = os.geteuid() == 0
        pid_namespace = settings.runner_pid_namespace
        sandbox = bwrap_prefix(
            isolation.bwrap, plan, as_root=as_root, network_none=network_none, pid_namespace=pid_namespace
        )
    off = settings.sandbox == "off"
    return RunnerSpec(
        key=key,
        prefab_id=prefab_id,
        python=python,
        code_dir=code_dir,
        memory_bytes=memory_bytes,
        uid=ids[0] if ids is not None else -1,
        gid=ids[1] if ids is not None else -1,
        sandbox=tuple(sandbox),
        unshare_net=network_none and not sandbox,
        pid_namespace=bool(sandbox) and settings.runner_pid_namespace,
        max_processes=0 if off or ids is None else settings.runner_max_processes,
        max_open_files=0 if off else settings.runner_max_open_files,
        max_file_bytes=0 if off else settings.runner_max_file_bytes,
        workspace_bytes=0 if off else settings.runner_workspace_bytes,
        pass_env=tuple(settings.runner_pass_env),
    )


def _user_ids(user: str | None) -> tuple[int, int] | None:
    if not user:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _closed_folder(path: Path) -> Path | None:
    """The first folder on the way to ``path`` (itself too, if a folder) that other users cannot pass through."""
    resolved = path.resolve()
    for folder in [*reversed(resolved.parents), resolved]:
        if folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    return None


def _check_reachable(settings: Settings, python: str) -> None:
    """Refuse to start when the runners' users could not reach what a job needs: without
    bubblewrap's mount view they walk the machine's own folders, so every folder on the way to the
    workspaces, the environments, the interpreter and the runner's entry point must let other users
    through (else every job would fail at its first step, each with the same error)."""
    needed = {
        settings.state_dir / "work": "FACTORY_STATE_DIR",
        settings.environments_dir(): "FACTORY_ENV_DIR",
        Path(python): "FACTORY_PREFAB_PYTHON",
        RUNNER_PATH: "the factory's installation",
    }
    for path, what in needed.items():
        closed = _closed_folder(path)
        if closed is not None:
            mode = stat.S_IMODE(closed.stat().st_mode)
            raise ProvisionError(
                f"prefab runners run as users of their own and cannot reach {path}: {closed} is mode {mode:04o}, "
                f"closed to other users. Let them through it (chmod o+x {closed}), place {what} elsewhere, "
                "or install bubblewrap (their own mount view needs none of this)"
            )


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
