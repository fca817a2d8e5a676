"""The ``factory`` command: up, gateway, worker, invoke, validate, new.

``up`` supervises Redis, the gateway and the workers; ``gateway`` and ``worker`` replace this
process (``os.execve``) with ``python -m gateway`` / ``python -m worker``, their settings passed
in the environment, so the core never imports the packages above it. Flags override the
environment (``Settings.from_env(**flags)``).

``invoke`` writes the stream's content and the final ``done`` data on stdout, so it can be piped;
the job id, other events and errors go to stderr. The progress bar shows on a terminal only.
"""

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from factory import cli_deploy, logs
from factory.catalog import Catalog
from factory.cli_events import EventPrinter
from factory.client import FactoryClient, FactoryClientError
from factory.embedded_redis import EmbeddedRedisError
from factory.errors import ManifestError
from factory.hardening import make_undumpable
from factory.scaffold import FUNCTION_NAME, create_prefab
from factory.settings import Settings, child_environ
from factory.supervisor import Supervisor

app = typer.Typer(
    name="factory",
    help="Run prefabs as jobs with streamed, resumable output.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
_QUIET_LOGS = {"validate", "new", "invoke", "deploy", "undeploy"}


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _settings(**overrides: object) -> Settings:
    """Settings from the environment with the given flags over it; a bad value exits with its reason."""
    try:
        return Settings.from_env(**overrides)
    except ValidationError as exc:
        _stderr().print(f"[red]invalid settings:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


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
    try:
        code = Supervisor(settings).run()
    except EmbeddedRedisError as exc:
        _stderr().print(f"[red]cannot start Redis:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


@app.command()
def gateway(
    host: HostOption = None, port: PortOption = None, prefabs: PrefabsOption = None, redis_url: RedisOption = None
) -> None:
    """Run one gateway (python -m gateway) against REDIS_URL."""
    _exec_module("gateway", _settings(host=host, port=port, prefabs=prefabs or None, redis_url=redis_url))


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
    _exec_module("worker", _settings(serve_prefabs=prefabs, redis_url=redis_url))


def _exec_module(module: str, settings: Settings) -> None:
    if not settings.redis_url:
        _stderr().print("[red]REDIS_URL is not set[/red] (give --redis-url, or run `factory up` for an embedded Redis)")
        raise typer.Exit(2)
    settings = settings.model_copy(update={"prefabs": [path.resolve() for path in settings.prefabs]})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module], child_environ(settings))


def parse_inputs(json_text: str | None, pairs: list[str]) -> dict[str, Any]:
    """The call's inputs: the --json object (or @file), then each KEY=VALUE (VALUE as JSON when it parses)."""
    inputs: dict[str, Any] = {}
    if json_text:
        text = Path(json_text[1:]).read_text(encoding="utf-8") if json_text.startswith("@") else json_text
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--json") from exc
        if not isinstance(parsed, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--json")
        inputs.update(parsed)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--input")
        try:
            inputs[key.strip()] = json.loads(raw)
        except ValueError:
            inputs[key.strip()] = raw
    return inputs


def _local_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


@app.command()
def invoke(
    function: Annotated[str, typer.Argument(help="The function to call.")],
    prefab: Annotated[str | None, typer.Option(help="Prefab id (needed when several serve FUNCTION).")] = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE; VALUE is parsed as JSON when it parses.")
    ] = None,
    json_inputs: Annotated[str | None, typer.Option("--json", help="All inputs as a JSON object, or @file.")] = None,
    url: Annotated[str | None, typer.Option(help="Gateway URL [default: from FACTORY_HOST/PORT].")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key [default: the first of FACTORY_API_KEYS].")] = None,
    detach: Annotated[bool, typer.Option(help="Print the job and exit instead of following its events.")] = False,
) -> None:
    """Call a function and follow its events live: progress bar, streamed text, final result."""
    call_inputs = parse_inputs(json_inputs, inputs or [])
    settings = _settings()
    out, err = Console(), _stderr()
    key = api_key or (settings.api_keys[0] if settings.api_keys else None)
    job_id: str | None = None
    with FactoryClient(url or _local_url(settings), api_key=key) as client:
        try:
            accepted = client.invoke(function, call_inputs, prefab_id=prefab)
            job_id = accepted.job_id
            if detach:
                out.print_json(accepted.model_dump_json())
                return
            err.print(f"[dim]job {job_id} queued[/dim]")
            printer = EventPrinter(out, err)
            try:
                code = printer.follow(client.events(job_id))
            finally:
                printer.close()
        except FactoryClientError as exc:
            details = f"\n{escape(json.dumps(exc.details, indent=2))}" if exc.details else ""
            err.print(f"[bold red]{escape(exc.code)}[/bold red]: {escape(exc.message)}{details}")
            raise typer.Exit(1) from exc
        except KeyboardInterrupt:
            if job_id is not None:
                err.print(f"\n[yellow]stopped following; job {job_id} goes on[/yellow] (GET /jobs/{job_id})")
            raise typer.Exit(130) from None
    raise typer.Exit(code)


@app.command()
def validate(
    dirs: Annotated[
        list[Path] | None, typer.Argument(help="Prefab folders or folders of them [default: FACTORY_PREFABS].")
    ] = None,
) -> None:
    """Check each prefab's manifest against its src/main.py; exit 1 if any is broken."""
    roots = dirs or _settings().prefabs
    catalog = Catalog.discover(roots)
    out = Console()
    if not catalog.entries:
        _stderr().print(f"[red]no prefab found[/red] under {escape(', '.join(str(r) for r in roots))}")
        raise typer.Exit(1)
    table = Table(title="prefabs")
    for column in ("id", "path", "status", "functions", "problems"):
        table.add_column(column, overflow="fold")
    for entry in catalog.entries:
        manifest = entry.manifest
        table.add_row(
            Text(manifest.id if manifest else "-"),
            Text(str(entry.path)),
            Text("OK", style="green") if entry.ok else Text("BROKEN", style="bold red"),
            Text(", ".join(f.name for f in manifest.functions) if manifest else ""),
            Text("\n".join(entry.problems)),
        )
    out.print(table)
    broken = [entry for entry in catalog.entries if not entry.ok]
    if broken:
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


app.command()(cli_deploy.deploy)
app.command()(cli_deploy.undeploy)


if __name__ == "__main__":
    app()
