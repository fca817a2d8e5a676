"""``factory deploy`` and ``factory undeploy``: deployments from the terminal.

``deploy PATH`` takes a wheel, or a prefab folder that it first builds into a wheel with a real
build backend (``factory.wheels.build_wheel``), sends it to the gateway's ``POST /v1/deploy``
(signed when ``FACTORY_DEPLOY_SECRET`` is set) and follows the build's steps live until the
deployment is ready (exit 0) or failed (exit 1, the reason verbatim). ``undeploy ID@VERSION``
retires the live deployment of that version.
"""

import hashlib
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from factory.client import DeploymentView, FactoryClient, FactoryClientError
from factory.errors import ManifestError
from factory.settings import Settings
from factory.wheels import build_wheel, deploy_signature, read_wheel

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4

UrlOption = Annotated[str | None, typer.Option(help="Gateway URL [default: FACTORY_URL, else FACTORY_HOST/PORT].")]


def _gateway_url(settings: Settings, url: str | None) -> str:
    if url:
        return url
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _exit_for(exc: FactoryClientError) -> int:
    if exc.status is None or exc.status >= 500:
        return EXIT_UNREACHABLE
    if exc.status == 404:
        return EXIT_NOT_FOUND
    return EXIT_USAGE


def _wheel_of(path: Path, into: Path, err: Console) -> Path:
    if path.is_file() and path.suffix == ".whl":
        return path
    if path.is_dir():
        with err.status(f"building a wheel of {escape(str(path))}"):
            wheel = build_wheel(path, into)
        err.print(f"built [bold]{escape(wheel.name)}[/bold]")
        return wheel
    raise ManifestError(f"{path}: not a .whl file nor a prefab folder")


def _follow(client: FactoryClient, deployment: DeploymentView, err: Console) -> int:
    """Print each build step as it arrives; the exit code of the deployment's outcome."""
    if deployment.job_id is None:
        return 0 if deployment.state == "ready" else EXIT_FAILED
    with err.status(f"deploying {deployment.prefab_id}@{deployment.version}") as status:
        for received in client.events(deployment.job_id):
            event, data = received.event, received.data
            if event["type"] == "progress" and isinstance(data, dict):
                status.update(escape(str(data.get("message", ""))))
                err.print(f"  [dim]{escape(str(data.get('message', '')))}[/dim]")
            elif event["type"] == "done":
                err.print(
                    f"[green]ready[/green] {deployment.prefab_id}@{deployment.version} ({deployment.deployment_id})"
                )
                return 0
            elif event["type"] == "error":
                err.print(f"[bold red]failed[/bold red] {deployment.prefab_id}@{deployment.version}:")
                err.print(escape(str(data)))
                return EXIT_FAILED
    return EXIT_FAILED


def deploy(
    path: Annotated[Path, typer.Argument(help="A prefab wheel (.whl) or a prefab folder (built into a wheel first).")],
    url: UrlOption = None,
    api_key: Annotated[str | None, typer.Option(help="API key [default: the first of FACTORY_API_KEYS].")] = None,
    follow: Annotated[bool, typer.Option(help="Follow the build until ready or failed.")] = True,
) -> None:
    """Deploy a prefab version; it serves calls as soon as a worker has built it.

    Exit codes: 0 ready, 1 the deployment failed, 2 bad input, 3 not found, 4 gateway unreachable.
    """
    settings = Settings.from_env()
    err = Console(stderr=True, soft_wrap=True)
    key = api_key or (settings.api_keys[0] if settings.api_keys else None)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            wheel = _wheel_of(path, Path(scratch), err)
            data = wheel.read_bytes()
            info = read_wheel(data)
        except ManifestError as exc:
            err.print(f"[red]{escape(exc.message)}[/red]")
            raise typer.Exit(EXIT_USAGE) from exc
        manifest = info.manifest
        sha = hashlib.sha256(data).hexdigest()
        signature = (
            deploy_signature(settings.deploy_secret, manifest.id, manifest.version, sha)
            if settings.deploy_secret
            else None
        )
        with FactoryClient(_gateway_url(settings, url), api_key=key) as client:
            try:
                deployment = client.deploy(wheel, manifest.id, manifest.version, signature)
                err.print(f"deployment [bold]{deployment.deployment_id}[/bold]: {deployment.state}")
                code = _follow(client, deployment, err) if follow else 0
            except FactoryClientError as exc:
                err.print(f"[bold red]{escape(exc.code)}[/bold red]: {escape(exc.message)}")
                raise typer.Exit(_exit_for(exc)) from exc
    raise typer.Exit(code)


def undeploy(
    ref: Annotated[str, typer.Argument(help="PREFAB_ID@VERSION, or a deployment id.")],
    url: UrlOption = None,
    api_key: Annotated[str | None, typer.Option(help="API key [default: the first of FACTORY_API_KEYS].")] = None,
) -> None:
    """Retire a prefab version: new calls stop using it; running jobs finish on it.

    Exit codes: 0 retired, 3 no such deployment, 4 gateway unreachable.
    """
    settings = Settings.from_env()
    err = Console(stderr=True, soft_wrap=True)
    key = api_key or (settings.api_keys[0] if settings.api_keys else None)
    with FactoryClient(_gateway_url(settings, url), api_key=key) as client:
        try:
            deployment_id = ref
            if "@" in ref:
                prefab_id, _, version = ref.partition("@")
                live = [d for d in client.deployments(prefab_id) if d.version == version and d.state != "retired"]
                if not live:
                    err.print(f"[red]no live deployment of {escape(ref)}[/red]")
                    raise typer.Exit(EXIT_NOT_FOUND)
                deployment_id = live[0].deployment_id
            retired = client.undeploy(deployment_id)
        except FactoryClientError as exc:
            err.print(f"[bold red]{escape(exc.code)}[/bold red]: {escape(exc.message)}")
            raise typer.Exit(_exit_for(exc)) from exc
    err.print(f"retired {retired.prefab_id}@{retired.version} ({retired.deployment_id})")
