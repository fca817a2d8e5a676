"""The CLI's job commands: invoke, jobs, status, follow, cancel; all through :class:`FactoryClient`.

``invoke`` and ``follow`` write the stream's content and the final ``done`` data on stdout, so
they can be piped; the job id, other events and errors go to stderr. The progress bar shows on a
terminal only. Each command exits with a code of :class:`ExitCode` (see ``factory --help``).
"""

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from factory.filerefs import UPLOAD_SCHEME
from factory_cli.common import ExitCode, client_for, fail, stderr
from factory_cli.event_printer import EventPrinter
from factory_client.client import FactoryClient, FactoryClientError, JobView

UrlOption = Annotated[
    str | None,
    typer.Option(
        metavar="URL", help="Gateway URL [default: FACTORY_URL, else the one `factory up` recorded, else FACTORY_PORT]."
    ),
]
ApiKeyOption = Annotated[
    str | None, typer.Option(metavar="KEY", help="API key [default: the first of FACTORY_API_KEYS].")
]
JobArgument = Annotated[str, typer.Argument(metavar="JOB", help="The job id.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

_STATUS_STYLE = {"queued": "cyan", "started": "yellow", "finished": "green", "failed": "red", "canceled": "magenta"}


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


_REFERENCE_SCHEMES = frozenset({UPLOAD_SCHEME, "http", "https", "s3"})


def is_reference(value: str) -> bool:
    """A file given as a reference the gateway fetches (upload://, http(s)://, s3://), not a local path."""
    return "://" in value and urlsplit(value).scheme.lower() in _REFERENCE_SCHEMES


def parse_files(pairs: list[str]) -> dict[str, list[str]]:
    """``GROUP=PATH`` (or ``GROUP=URL``) pairs as file groups; a missing file is a usage error."""
    groups: dict[str, list[str]] = {}
    for pair in pairs:
        group, sep, where = pair.partition("=")
        if not sep or not group.strip() or not where:
            raise typer.BadParameter(f"expected GROUP=PATH, got {pair!r}", param_hint="--file")
        if not is_reference(where) and not Path(where).is_file():
            raise typer.BadParameter(f"no such file: {where}", param_hint="--file")
        groups.setdefault(group.strip(), []).append(where)
    return groups


def _upload_all(client: FactoryClient, groups: dict[str, list[str]], err: Console) -> dict[str, list[str]]:
    """Each local file uploaded (``POST /files``) and replaced by its reference; URLs pass as they are."""
    refs: dict[str, list[str]] = {}
    for group, items in groups.items():
        for item in items:
            if is_reference(item):
                refs.setdefault(group, []).append(item)
                continue
            uploaded = client.upload(Path(item))
            err.print(f"[dim]uploaded {escape(item)} ({uploaded.size} bytes) as {escape(uploaded.ref)}[/dim]")
            refs.setdefault(group, []).append(uploaded.ref)
    return refs


def _follow(client: FactoryClient, job_id: str, last_event_id: int | None) -> int:
    """Show the job's events until its terminal one (resuming after drops); 0 done, 1 failed."""
    printer = EventPrinter(Console(), stderr())
    try:
        return printer.follow(client.events(job_id, last_event_id=last_event_id))
    except KeyboardInterrupt:
        printer.close()
        stderr().print(f"\n[yellow]stopped following; job {job_id} goes on[/yellow] (factory follow {job_id})")
        raise typer.Exit(130) from None
    finally:
        printer.close()


def invoke(
    function: Annotated[str, typer.Argument(metavar="FUNCTION", help="The function to call.")],
    prefab: Annotated[
        str | None, typer.Option(metavar="PREFAB", help="Prefab id (needed when several serve FUNCTION).")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", metavar="KEY=VALUE", help="KEY=VALUE; VALUE is parsed as JSON when it parses."),
    ] = None,
    json_inputs: Annotated[
        str | None, typer.Option("--json", metavar="JSON|@FILE", help="All inputs as a JSON object, or @file.")
    ] = None,
    files: Annotated[
        list[str] | None,
        typer.Option(
            "--file",
            "-f",
            metavar="GROUP=PATH",
            help="GROUP=PATH: uploads the file into the file group; repeat for more.",
        ),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Print the job and exit without following.")] = False,
) -> None:
    """Call a function and follow its events live: progress bar, streamed text, final result."""
    call_inputs = parse_inputs(json_inputs, inputs or [])
    groups = parse_files(files or [])
    err = stderr()
    with client_for(url, api_key) as client:
        try:
            refs = _upload_all(client, groups, err)
            accepted = client.invoke(function, call_inputs, prefab_id=prefab, files=refs or None)
            if detach:
                Console().print_json(accepted.model_dump_json())
                return
            err.print(f"[dim]job {accepted.job_id} queued[/dim]")
            code = _follow(client, accepted.job_id, None)
        except FactoryClientError as exc:
            raise fail(exc) from exc
    raise typer.Exit(code)


def follow(
    job_id: JobArgument,
    after: Annotated[int | None, typer.Option("--after", min=0, help="Start after this event seq.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Follow a job's events to its end (from the start, or after --after), resuming by itself after drops."""
    with client_for(url, api_key) as client:
        try:
            client.job(job_id)  # an unknown job is a 404 here, not an empty stream
            code = _follow(client, job_id, after)
        except FactoryClientError as exc:
            raise fail(exc) from exc
    raise typer.Exit(code)


def _status_code(job: JobView) -> ExitCode:
    return ExitCode.JOB_FAILED if job.status in ("failed", "canceled") else ExitCode.DONE


def _job_table(jobs: list[JobView]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("job", "prefab", "function", "status", "created", "duration", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        duration = (job.ended_at - (job.started_at or job.created_at)).total_seconds() if job.ended_at else None
        table.add_row(
            Text(job.job_id),
            Text(job.prefab_id),
            Text(job.function_name),
            Text(job.status, style=_STATUS_STYLE.get(job.status, "")),
            Text(job.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")),
            Text("" if duration is None else f"{duration:.2f} s"),
            Text(f"{job.error.code}: {job.error.message}" if job.error else "", style="red"),
        )
    return table


def status(job_id: JobArgument, as_json: JsonFlag = False, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Show a job: status, times, worker, error or output. Exits 1 if it failed or was canceled."""
    with client_for(url, api_key) as client:
        try:
            job = client.job(job_id)
        except FactoryClientError as exc:
            raise fail(exc) from exc
    out = Console()
    if as_json:
        out.print_json(job.model_dump_json())
    else:
        out.print(_job_table([job]))
        if job.output is not None:
            out.print_json(data=job.output, default=str)
        for group, links in (job.files or {}).items():
            out.print(f"[bold]{escape(group)}[/bold]: " + " ".join(escape(link) for link in links))
    raise typer.Exit(_status_code(job))


def jobs(
    limit: Annotated[int, typer.Option(min=1, max=200, help="At most this many, newest first.")] = 20,
    status_filter: Annotated[
        str | None, typer.Option("--status", help="Only this status: queued, started, finished, failed, canceled.")
    ] = None,
    prefab: Annotated[str | None, typer.Option(help="Only this prefab's jobs.")] = None,
    function: Annotated[str | None, typer.Option(help="Only this function's jobs.")] = None,
    as_json: JsonFlag = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List recent jobs, newest first."""
    with client_for(url, api_key) as client:
        try:
            found = client.jobs(limit, status=status_filter, prefab_id=prefab, function_name=function)
        except FactoryClientError as exc:
            raise fail(exc) from exc
    out = Console()
    if as_json:
        out.print_json(data=[job.model_dump(mode="json") for job in found])
    elif found:
        out.print(_job_table(found))
    else:
        stderr().print("no jobs")


def cancel(job_id: JobArgument, url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """Cancel a job: a queued one never starts, a running one stops within a second."""
    with client_for(url, api_key) as client:
        try:
            job = client.cancel(job_id)
        except FactoryClientError as exc:
            raise fail(exc) from exc
    Console().print(_job_table([job]))
