"""What every ``ota`` command that talks to a running server shares.

``--server`` (env ``OTA_SERVER``, default http://127.0.0.1:8000), ``--token`` (env ``OTA_TOKEN``) and
``--json``; one client per command (:func:`client_for`); output (:func:`emit`, :func:`table`) and exit
codes: 0 done, 1 the server refused (HTTP status and its detail on stderr) or could not be reached,
2 a usage error (bad option, unreadable file).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import httpx
import typer

from ota_server.cli.api_client import ApiClient, ApiError

DEFAULT_SERVER = "http://127.0.0.1:8000"
# Tests point the client at an in-process app; None means a real HTTP connection.
transport_override: httpx.BaseTransport | None = None

ServerOption = Annotated[
    str, typer.Option(envvar="OTA_SERVER", help="The server's URL (env OTA_SERVER)", show_default=True)
]
TokenOption = Annotated[str | None, typer.Option(envvar="OTA_TOKEN", help="Your API token (env OTA_TOKEN)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's answer as JSON (for scripts)")]


def fail(message: str, code: int = 1) -> NoReturn:
    """``error: message`` on stderr and exit ``code`` (1: refused or unreachable, 2: a usage error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def client_for(server: str, token: str | None) -> Iterator[ApiClient]:
    """A client of ``server`` (``OTA_SERVER``); an :class:`ApiError` inside becomes ``error: ...`` and exit 1."""
    try:
        with ApiClient(server, token, transport=transport_override) as client:
            yield client
    except ApiError as exc:
        fail(str(exc))


def emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = Table(title=title)
    for column in columns:
        shown.add_column(column, overflow="fold")  # a narrow terminal wraps a value, never cuts it to "…"
    for row in rows:
        shown.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(shown)
