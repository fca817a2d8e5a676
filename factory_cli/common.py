"""What the CLI's commands share: exit codes, settings from flags, the gateway to talk to, error reports.

Exit codes are part of the CLI's contract (listed in ``factory --help``):

====  =====================================================================
0     done: the job finished (or the command did what it was asked)
1     the job failed (an ``error`` event: the function's own, a timeout, a cancel...)
2     usage or bad input: a wrong flag, inputs the manifest refuses (422), a bad request
3     not found: unknown prefab, function or job (404)
4     unreachable or unavailable: no answer, Redis down or queue full (503), a taken port
====  =====================================================================
"""

from enum import IntEnum
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from factory.settings import Settings
from factory_cli.gateway_record import read_record
from factory_client.client import FactoryClient, FactoryClientError


class ExitCode(IntEnum):
    DONE = 0
    JOB_FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4


EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 the job failed; 2 usage or bad input; 3 not found (prefab, function or job); "
    "4 gateway unreachable or unavailable."
)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def settings_from(**overrides: object) -> Settings:
    """Settings from the environment with the given flags over it; a bad value exits 2 with its reason."""
    try:
        return Settings.from_env(**overrides)
    except ValidationError as exc:
        stderr().print(f"[red]invalid settings:[/red] {escape(str(exc))}")
        raise typer.Exit(ExitCode.USAGE) from exc


def local_url(settings: Settings) -> str:
    """The URL of a gateway listening on the configured host and port, as seen from this machine."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def gateway_url(url: str | None, settings: Settings) -> str:
    """--url, else FACTORY_URL, else what ``factory up`` recorded in the state folder, else FACTORY_HOST/PORT."""
    if url:
        return url
    if settings.url:
        return settings.url
    record = read_record(settings.state_dir)
    return record.url if record is not None else local_url(settings)


def client_for(url: str | None, api_key: str | None) -> FactoryClient:
    """A client of the gateway the flags and the environment name."""
    settings = settings_from()
    key = api_key or (settings.api_keys[0] if settings.api_keys else None)
    return FactoryClient(gateway_url(url, settings), api_key=key)


def exit_code_of(error: FactoryClientError) -> ExitCode:
    """The exit code an API error or a lost connection maps to."""
    if error.status is None or error.status >= 500:
        return ExitCode.UNAVAILABLE
    if error.status == 404:
        return ExitCode.NOT_FOUND
    return ExitCode.USAGE


def fail(error: FactoryClientError) -> typer.Exit:
    """Report an API error on stderr (code, message, each bad field); the exit to raise."""
    report(error)
    return typer.Exit(exit_code_of(error))


def report(error: FactoryClientError) -> None:
    err = stderr()
    err.print(f"[bold red]{escape(error.code)}[/bold red]: {escape(error.message)}")
    for line in _detail_lines(error.details):
        err.print(f"  [red]{escape(line)}[/red]")


def _detail_lines(details: Any) -> list[str]:
    """One line per bad field of a 422's details (``[{"field"|"loc", "message"|"msg"}]``), else the JSON."""
    if not details:
        return []
    if isinstance(details, list) and all(isinstance(item, dict) for item in details):
        lines = []
        for item in details:
            where = item.get("field") or item.get("loc") or item.get("name") or "?"
            if isinstance(where, list):
                where = ".".join(str(part) for part in where)
            lines.append(f"{where}: {item.get('message') or item.get('msg') or item}")
        return lines
    return [str(details)]
