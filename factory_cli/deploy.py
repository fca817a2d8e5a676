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

from factory.errors import ManifestError
from factory.wheels import build_wheel, deploy_signature, read_wheel
from factory_cli.common import ExitCode, client_for, fail, settings_from, stderr
from factory_client.client import DeploymentView, FactoryClient, FactoryClientError

UrlOption = Annotated[
    str | None, typer.Option(help="Gateway URL [default: FACTORY_URL, else the one factory up recorded].")
]
KeyOption = Annotated[str | None, typer.Option(help="API key [default: the first of FACTORY_API_KEYS].")]


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
        return ExitCode.DONE if deployment.state == "ready" else ExitCode.JOB_FAILED
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
                return ExitCode.JOB_FAILED
    return ExitCode.JOB_FAILED


def deploy(
    path: Annotated[Path, typer.Argument(help="A prefab wheel (.whl) or a prefab folder (built into a wheel first).")],
    url: UrlOption = None,
    api_key: KeyOption = None,
    follow: Annotated[bool, typer.Option(help="Follow the build until ready or failed.")] = True,
) -> None:
    """Deploy a prefab version; it serves calls as soon as a worker has built it.

    Exit codes: 0 ready; 1 the deployment failed; 2 bad input; 3 not found; 4 gateway unreachable.
    """
    settings = settings_from()
    err = stderr()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            wheel = _wheel_of(path, Path(scratch), err)
            data = wheel.read_bytes()
            info = read_wheel(data)
        except ManifestError as exc:
            err.print(f"[red]{escape(exc.message)}[/red]")
            raise typer.Exit(ExitCode.USAGE) from exc
        manifest = info.manifest
        sha = hashlib.sha256(data).hexdigest()
        signature = (
            deploy_signature(settings.deploy_secret, manifest.id, manifest.version, sha)
            if settings.deploy_secret
            else None
        )
        with client_for(url, api_key) as client:
            try:
                deployment = client.deploy(wheel, manifest.id, manifest.version, signature)
                err.print(f"deployment [bold]{deployment.deployment_id}[/bold]: {deployment.state}")
                code = _follow(client, deployment, err) if follow else ExitCode.DONE
            except FactoryClientError as exc:
                raise fail(exc) from exc
    raise typer.Exit(code)


def undeploy(
    ref: Annotated[str, typer.Argument(help="PREFAB_ID@VERSION, or a deployment id.")],
    url: UrlOption = None,
    api_key: KeyOption = None,
) -> None:
    """Retire a prefab version: new calls stop using it; running jobs finish on it.

    Exit codes: 0 retired; 3 no such deployment; 4 gateway unreachable.
    """
    err = stderr()
    with client_for(url, api_key) as client:
        try:
            deployment_id = ref
            if "@" in ref:
                prefab_id, _, version = ref.partition("@")
                live = [d for d in client.deployments(prefab_id) if d.version == version and d.state != "retired"]
                if not live:
                    err.print(f"[red]no live deployment of {escape(ref)}[/red]")
                    raise typer.Exit(ExitCode.NOT_FOUND)
                deployment_id = live[0].deployment_id
            retired = client.undeploy(deployment_id)
        except FactoryClientError as exc:
            raise fail(exc) from exc
    err.print(f"retired {retired.prefab_id}@{retired.version} ({retired.deployment_id})")
