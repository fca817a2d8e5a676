"""The ``factory`` command: up, gateway, worker, validate, new here; invoke, jobs, status, follow, cancel
in :mod:`factory_cli.jobs`; deploy, undeploy in :mod:`factory_cli.deploy`; workers in :mod:`factory_cli.workers`.

``up`` supervises Redis, the gateway and the workers; ``gateway`` and ``worker`` replace this
process (``os.execve``) with ``python -m gateway`` / ``python -m worker``, their settings passed
in the environment: the gateway and the worker import neither this package nor each other.
Flags override the environment (``Settings.from_env(**flags)``).

Help is click's plain formatter (``rich_markup_mode=None``): with typer's rich markup, ``[env
FACTORY_PORT]`` in a help text is taken for a style tag and vanishes, and every flag is listed with a
``<bool>`` value. The exit codes (see :mod:`factory_cli.common`) close every command's help.
"""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

import gateway as gateway_package
import worker as worker_package
from factory import isolation, logs
from factory.catalog import Catalog
from factory.errors import ManifestError
from factory.hardening import make_undumpable
from factory.settings import Settings, child_environ
from factory_cli import deploy, jobs, preflight
from factory_cli import workers as workers_command
from factory_cli.common import EXIT_CODES_HELP, ExitCode, client_for, local_url
from factory_cli.common import settings_from as _settings
from factory_cli.common import stderr as _stderr
from factory_cli.embedded_redis import EmbeddedRedisError
from factory_cli.gateway_record import read_record, remove_record, write_record
from factory_cli.scaffold import FUNCTION_NAME, create_prefab
from factory_cli.supervisor import Supervisor
from factory_client.client import FactoryClientError

app = typer.Typer(
    name="factory",
    help="Run prefabs as jobs with streamed, resumable output.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags as flags, "[env X]" hints kept as written
)

HostOption = Annotated[str | None, typer.Option(help="Interface the gateway listens on [env FACTORY_HOST].")]
PortOption = Annotated[int | None, typer.Option(help="Port of the gateway [env FACTORY_PORT].")]
PrefabsOption = Annotated[
    list[Path] | None,
    typer.Option("--prefabs", help="A prefab folder or a folder of them; repeat for several [env FACTORY_PREFABS]."),
]
RedisOption = Annotated[str | None, typer.Option("--redis-url", help="Redis to use [env REDIS_URL].")]
StateDirOption = Annotated[
    Path | None, typer.Option(help="Where Redis data and job files live [env FACTORY_STATE_DIR].")
]

# Commands whose own output reports everything: library logs only on --verbose.
_QUIET_LOGS = {"validate", "new", "invoke", "jobs", "status", "follow", "cancel", "deploy", "undeploy", "workers"}

for _command in (jobs.invoke, jobs.jobs, jobs.status, jobs.follow, jobs.cancel):
    app.command(epilog=EXIT_CODES_HELP)(_command)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs of the CLI itself.")] = False,
) -> None:
    """Run prefabs as jobs with streamed, resumable output."""
    if ctx.resilient_parsing or ctx.invoked_subcommand in (None, "gateway", "worker"):
        return  # gateway and worker configure their own logging after the exec
    if ctx.invoked_subcommand == "up":
        settings = _settings()
        logs.configure("supervisor", settings.log_level, settings.log_json)
    elif verbose:
        logs.configure("cli", "DEBUG", as_json=False)
    else:
        logs.configure("cli", "CRITICAL" if ctx.invoked_subcommand in _QUIET_LOGS else "WARNING", as_json=False)


@app.command()
def up(
    host: HostOption = None,
    port: PortOption = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes [env FACTORY_WORKERS].")] = None,
    prefabs: PrefabsOption = None,
    state_dir: StateDirOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Run the whole factory: an embedded Redis (unless --redis-url), the gateway and N workers. Ctrl-C stops all."""
    settings = _settings(
        host=host, port=port, workers=workers, prefabs=prefabs or None, state_dir=state_dir, redis_url=redis_url
    )
    make_undumpable()
    _preflight(settings)
    if loud := isolation.warning(isolation.probe(settings)):  # docs/security.md
        _stderr().print(f"[bold yellow]WARNING: {escape(loud)}[/bold yellow]")
    write_record(settings.state_dir, local_url(settings))
    try:
        code = Supervisor(settings).run()
    except EmbeddedRedisError as exc:
        _stderr().print(f"[red]cannot start Redis:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    finally:
        remove_record(settings.state_dir)
    raise typer.Exit(code)


def _preflight(settings: Settings) -> None:
    """Refuse a taken port (exit 4) and warn loudly when no prefab would be served."""
    found = preflight.check(settings)
    err = _stderr()
    if not found.loaded:
        where = ", ".join(str(path) for path in settings.prefabs)
        err.print(
            f"[bold yellow]WARNING: no prefab to serve[/bold yellow] under {escape(where)}"
            + (f" ({len(found.broken)} broken: see the log)" if found.broken else "")
            + "; every call will answer 404. Add one with [bold]factory new NAME[/bold] or give --prefabs DIR."
        )
    if found.port_problem:
        err.print(f"[bold red]cannot start the gateway:[/bold red] {escape(found.port_problem)}")
        raise typer.Exit(ExitCode.UNAVAILABLE)


@app.command()
def gateway(
    host: HostOption = None, port: PortOption = None, prefabs: PrefabsOption = None, redis_url: RedisOption = None
) -> None:
    """Run one gateway (python -m gateway) against REDIS_URL."""
    _exec_module(
        gateway_package.__name__, _settings(host=host, port=port, prefabs=prefabs or None, redis_url=redis_url)
    )


@app.command()
def worker(
    prefabs: Annotated[
        str | None,
        typer.Option(
            "--prefabs", help="Serve only these prefab ids, comma-separated [env FACTORY_SERVE_PREFABS; default: all]."
        ),
    ] = None,
    redis_url: RedisOption = None,
) -> None:
    """Run one worker (python -m worker) against REDIS_URL."""
    _exec_module(worker_package.__name__, _settings(serve_prefabs=prefabs, redis_url=redis_url))


def _exec_module(module: str, settings: Settings) -> None:
    if not settings.redis_url:
        _stderr().print("[red]REDIS_URL is not set[/red] (give --redis-url, or run `factory up` for an embedded Redis)")
        raise typer.Exit(2)
    settings = settings.model_copy(update={"prefabs": [path.resolve() for path in settings.prefabs]})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module], child_environ(settings))


def _deployed_states(url: str | None) -> dict[tuple[str, str], tuple[str, str | None]] | None:
    """Each (prefab, version) a running factory knows, with its state and reason; None if none answers."""
    settings = _settings()
    if url is None and settings.url is None and read_record(settings.state_dir) is None:
        return None
    try:
        with client_for(url, None) as client:
            summaries = client.prefabs()
    except FactoryClientError:
        return None
    return {
        (summary.id, str(version.get("version"))): (str(version.get("state")), version.get("reason"))
        for summary in summaries
        if summary.id
        for version in summary.versions
    }


@app.command()
def validate(
    dirs: Annotated[
        list[Path] | None, typer.Argument(help="Prefab folders or folders of them [default: FACTORY_PREFABS].")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="A running factory whose deployment of each prefab to report "
            "[default: FACTORY_URL, else the one factory up recorded]."
        ),
    ] = None,
) -> None:
    """Check each prefab's manifest against its src/main.py and, when a factory runs, its deployment
    there (built, imported, checked against the code); exit 1 if any is broken or failed."""
    roots = dirs or _settings().prefabs
    catalog = Catalog.discover(roots)
    out = Console()
    if not catalog.entries:
        _stderr().print(f"[red]no prefab found[/red] under {escape(', '.join(str(r) for r in roots))}")
        raise typer.Exit(1)
    deployed = _deployed_states(url)
    table = Table(title="prefabs")
    for column in ("id", "path", "status", "deployed", "functions", "problems"):
        table.add_column(column, overflow="fold")
    failed = False
    for entry in catalog.entries:
        manifest = entry.manifest
        found = (deployed or {}).get((manifest.id, manifest.version)) if manifest else None
        state, reason = found or ("-", None)
        failed = failed or state == "failed"
        table.add_row(
            Text(manifest.id if manifest else "-"),
            Text(str(entry.path)),
            Text("OK", style="green") if entry.ok else Text("BROKEN", style="bold red"),
            Text(state.upper(), style="bold red" if state == "failed" else "green" if state == "ready" else ""),
            Text(", ".join(f.name for f in manifest.functions) if manifest else ""),
            Text("\n".join([*entry.problems, *([reason] if reason else [])])),
        )
    out.print(table)
    broken = [entry for entry in catalog.entries if not entry.ok]
    if broken or failed:
        raise typer.Exit(1)


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="The prefab id, also its folder name (letters, digits, . _ -).")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to create it.")] = Path("prefabs"),
) -> None:
    """Scaffold a prefab: manifest, src/main.py with one streaming function, tests, pyproject, README."""
    try:
        folder = create_prefab(name, directory)
    except ManifestError as exc:
        _stderr().print(f"[red]{escape(exc.message)}[/red]")
        raise typer.Exit(1) from exc
    out = Console()
    out.print(f"created [bold]{escape(str(folder))}[/bold]")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out.print(f"  {escape(str(path.relative_to(folder)))}")
    out.print(
        f"next: [bold]factory validate {escape(str(folder))}[/bold], then "
        f"[bold]factory invoke {FUNCTION_NAME} --prefab {escape(name)} -i text=hello[/bold]"
    )


app.command()(deploy.deploy)
app.command()(deploy.undeploy)
app.command()(workers_command.workers)


if __name__ == "__main__":
    app()
