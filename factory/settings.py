"""Settings: the one frozen configuration object, built once at each entry point.

This is the only module that reads ``os.environ``. Every setting is an environment variable
with the ``FACTORY_`` prefix, except ``REDIS_URL`` which keeps its conventional name.
``FACTORY_PREFABS`` is an ``os.pathsep``-separated list of directories, like ``PATH``.
"""

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration shared by the gateway, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="FACTORY_", frozen=True, extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "FACTORY_REDIS_URL"))
    prefabs: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path("prefabs")])
    state_dir: Path = Path(".factory")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    queue_name: str = "factory"

    default_timeout_s: float = 600.0
    retention_s: int = 24 * 3600
    keepalive_s: float = 15.0
    max_body_bytes: int = 1024 * 1024
    max_queue_length: int = 10_000
    max_events_per_job: int = 100_000
    max_event_bytes: int = 256 * 1024
    max_readers_per_job: int = 1_000
    max_streams_per_gateway: int = 20_000
    idle_reader_timeout_s: float = 3600.0
    sync_wait_s: float = 600.0
    redis_outage_s: float = 30.0
    worker_heartbeat_s: float = 5.0
    worker_lost_after_s: float = 30.0
    shutdown_grace_s: float = 30.0
    # A work horse runs this many jobs, then the worker replaces it (1: a fresh horse for every job).
    max_jobs_per_horse: int = Field(default=1000, ge=1)

    # Files (v3.0): unset storage_url keeps them in state_dir/files; "s3://bucket/prefix" uses S3.
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = Field(
        default=None, validation_alias=AliasChoices("FACTORY_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    aws_access_key_id: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "FACTORY_AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: str | None = Field(
        default=None,
        repr=False,
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "FACTORY_AWS_SECRET_ACCESS_KEY"),
    )
    aws_session_token: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("AWS_SESSION_TOKEN", "FACTORY_AWS_SESSION_TOKEN")
    )
    max_file_bytes: int = 100 * 1024 * 1024
    max_job_file_bytes: int = 1024 * 1024 * 1024
    fetch_timeout_s: float = 60.0
    public_url: str | None = None
    sweep_interval_s: float = 300.0

    # Secrets: kept out of repr() so a logged Settings never shows them.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    token_secret: str | None = Field(default=None, repr=False)
    token_ttl_s: int = 24 * 3600
    metrics_public: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    log_level: str = "INFO"
    log_json: bool = True

    # Deployments (docs/deployments.md).
    env_dir: Path | None = None  # where prefab environments are built; default <state_dir>/envs
    runner_user: str | None = None  # as root, prefab processes run as this user (e.g. nobody)
    prefab_python: str | None = None  # the interpreter prefab environments are made from; default: the factory's
    max_runners_per_horse: int = Field(default=4, ge=1)  # prefab versions a work horse keeps running
    serve_prefabs: Annotated[list[str], NoDecode] = Field(default_factory=list)  # a worker's prefabs (all: empty)
    deploy_secret: str | None = Field(default=None, repr=False)  # HMAC key of X-Hub-Signature-256 on /v1/deploy
    deploy_webhook_url: str | None = None
    deploy_webhook_secret: str | None = Field(default=None, repr=False)
    deploy_timeout_s: float = 900.0
    max_wheel_bytes: int = 200 * 1024 * 1024
    queue_without_worker: bool = False  # queue a call no live worker serves, instead of 503 NO_WORKER
    # The ecosystem's API (/v1, /internal; see README "For ecosystem callers").
    # Key of the callers' secrets at rest and in flight (Fernet); unset: a key file under state_dir.
    secrets_key: str | None = Field(default=None, repr=False)
    # Quotas per API key (per caller when auth is off); 0 means no limit. ``quotas`` overrides them
    # per key: {"<API key>": {"max_running": 2, "calls_per_minute": 60}}.
    quota_max_running: int = Field(default=0, ge=0)
    quota_calls_per_minute: int = Field(default=0, ge=0)
    quotas: dict[str, dict[str, int]] = Field(default_factory=dict, repr=False)
    # How long an upload URL from /internal/files/generate_upload_url (and a download URL) stays valid.
    signed_url_ttl_s: int = Field(default=3600, ge=1)
    # The gateway the CLI's client commands talk to (FACTORY_URL); unset: the one `factory up` recorded.
    url: str | None = None
    # Hostile load: what one reader may hold, and the limits on connections and request heads.
    reader_buffer_bytes: int = Field(default=512 * 1024, ge=1024)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_timeout_s: float = Field(default=65.0, gt=0)
    max_connections: int = 0  # 0: as many as the open-file limit allows, descriptors kept in reserve
    max_connections_per_client: int = 2000  # 0: no limit per client address (behind a reverse proxy)
    reader_send_timeout_s: float = Field(default=60.0, gt=0)  # a reader slower than this for one write is cut
    # The sandbox around prefab runners (docs/security.md). auto: the strongest this machine offers
    # (bubblewrap + a user per deployment as root); off: runners run as the worker's user, unconfined.
    sandbox: Literal["auto", "off"] = "auto"
    bwrap_path: str = "bwrap"  # bubblewrap's executable (a name looked up on PATH, or a path)
    runner_uid_base: int = Field(default=200_000, ge=1000)  # as root: each deployment runs as a uid in
    runner_uid_span: int = Field(default=1 << 30, ge=1)  # [base, base + span), no /etc/passwd entry needed
    runner_max_processes: int = Field(default=256, ge=0)  # RLIMIT_NPROC of a deployment's user (0: none)
    runner_max_open_files: int = Field(default=1024, ge=0)  # RLIMIT_NOFILE of a runner (0: inherited)
    runner_max_file_bytes: int = Field(default=1024**3, ge=0)  # RLIMIT_FSIZE: the largest file it may write
    runner_workspace_bytes: int = Field(default=2 * 1024**3, ge=0)  # a job's workspace on disk (0: no limit)
    runner_tmp_bytes: int = Field(default=64 * 1024**2, ge=1024**2)  # the private /tmp and /dev/shm (tmpfs)
    runner_pass_env: Annotated[list[str], NoDecode] = Field(default_factory=list)  # worker variables runners get
    runner_network: Literal["outbound", "none"] = "outbound"  # the default network policy of a prefab
    runner_network_by_prefab: dict[str, Literal["outbound", "none"]] = Field(default_factory=dict)  # id -> policy
    # Runners see only their own processes (their pids are then private), and whatever a runner leaves
    # running dies with it: the namespace ends with its init, which dies with the horse.
    runner_pid_namespace: bool = True

    @field_validator("runner_pass_env", mode="before")
    @classmethod
    def _split_pass_env(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("prefabs", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p) for p in value.split(os.pathsep) if p]
        return value

    @field_validator("api_keys", "cors_origins", "serve_prefabs", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Read the environment, with explicit overrides (e.g. CLI flags) taking precedence."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    def public_base_url(self) -> str:
        """Base of the URLs handed to callers (output files): FACTORY_PUBLIC_URL, else this host and port."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def environments_dir(self) -> Path:
        return self.env_dir or self.state_dir / "envs"

    def require_redis_url(self) -> str:
        """The Redis URL, which every process but ``factory up`` must be given."""
        if not self.redis_url:
            raise RuntimeError("REDIS_URL is not set (run `factory up` for an embedded Redis)")
        return self.redis_url


# The storage credentials' variables: a worker takes them out of its environment after reading its
# Settings, so prefab functions cannot read the factory's own credentials.
STORAGE_CREDENTIAL_VARS = frozenset(
    f"{prefix}{name}"
    for prefix in ("", "FACTORY_")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
)
# The factory's own credentials: parsed into Settings at start, then kept from prefab code.
FACTORY_CREDENTIAL_VARS = frozenset(
    {
        "REDIS_URL",
        "FACTORY_REDIS_URL",
        "FACTORY_API_KEYS",
        "FACTORY_TOKEN_SECRET",
        "FACTORY_DEPLOY_SECRET",
        "FACTORY_DEPLOY_WEBHOOK_SECRET",
        "FACTORY_SECRETS_KEY",
        "FACTORY_QUOTAS",
    }
)


def read_secret_values(names: set[str]) -> dict[str, str]:
    """Take the declared secrets out of the process environment.

    The worker calls this once at start; it removes them from ``os.environ`` so a work horse
    only sees the secrets its own function declares (injected again per job).
    """
    found: dict[str, str] = {}
    for name in names:
        value = os.environ.pop(name, None)
        if value is not None:
            found[name] = value
    return found


def _env_name(name: str, alias: object) -> str:
    """The variable a field is read from: its first alias, else ``FACTORY_<NAME>``."""
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"FACTORY_{name.upper()}"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make a child process's ``Settings.from_env()`` equal ``settings``."""
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        key = _env_name(name, field.validation_alias)
        if value is None:
            continue
        if name == "prefabs":
            env[key] = os.pathsep.join(str(path) for path in value)
        elif isinstance(value, list) and any(isinstance(m, NoDecode) or m is NoDecode for m in field.metadata):
            env[key] = ",".join(str(item) for item in value)
        elif isinstance(value, list | dict):
            env[key] = json.dumps(value, default=str)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        else:
            env[key] = str(value)
    return env


def child_environ(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child process: this one's (secrets included), with ``settings`` and ``extra`` over it."""
    env = dict(os.environ)
    if settings.redis_url is None:
        env.pop("REDIS_URL", None)
        env.pop("FACTORY_REDIS_URL", None)
    env.update(settings_env(settings))
    env.update(extra)
    return env
