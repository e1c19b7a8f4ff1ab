"""``ota tokens``, ``ota audit verify`` and ``ota reports export``: over the REST API, like every operator command.

They used to open ``./var`` themselves, so run from another directory they made an empty
database and answered from it ("no recall 1", a token the server had never heard of). Now they
ask the server named by ``--server`` / ``OTA_SERVER`` with ``--token`` / ``OTA_TOKEN``, and
exit as the other operator commands do: 0 done, 1 refused or unreachable, 2 a usage error.
The first admin token comes from the server's first start (``<data dir>/admin-token``) or,
when no one holds one any more, from ``ota db bootstrap-token`` on the server's machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ota_server.cli.common import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption, client_for, emit, fail
from ota_server.regulator import Format, Kind
from ota_server.roles import Role

tokens_app = typer.Typer(help="API tokens (people and their roles), admin only.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log, admin only.", no_args_is_help=True)
regulator_reports_app = typer.Typer(help="Regulator and operator reports (CSV, JSON, PDF).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``ota tokens``, ``ota audit`` and ``ota reports`` to the ``ota`` app."""
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(audit_app, name="audit")
    app.add_typer(regulator_reports_app, name="reports")


# --- ota tokens ------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="The person the token belongs to")],
    role: Annotated[Role, typer.Option(help="What they may do")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token (as an admin) and print its secret: shown once, the server keeps only its hash."""
    with client_for(server, token) as client:
        created = client.new_token(name, role.value)
    emit(as_json, created, lambda: typer.echo(created["token"]))


def _token_line(record: dict[str, Any]) -> str:
    revoked = f" revoked {record['revoked_at']}" if record.get("revoked_at") else ""
    return f"{record['id']}\t{record['name']}\t{record['role']}\t{record['prefix']}...{revoked}"


@tokens_app.command("list")
def tokens_list(server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Every token: id, name, role, prefix, revoked or not (never the secret)."""
    with client_for(server, token) as client:
        records = client.tokens()

    def human() -> None:
        for record in records:
            typer.echo(_token_line(record))

    emit(as_json, records, human)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(min=1, help="The token's id (ota tokens list)")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a token: refused from the next request on (never the last admin token)."""
    with client_for(server, token) as client:
        record = client.revoke_token(token_id)
    emit(as_json, record, lambda: typer.echo(_token_line(record)))


# --- ota audit verify ---------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Have the server recompute the audit log's hash chain; exit 1 and name the first broken entry if it fails."""
    with client_for(server, token) as client:
        result = client.verify_audit()
    if as_json:
        emit(True, result, lambda: None)
    elif result["ok"]:
        typer.echo(f"audit log intact: {result['entries']} entries, head {result['head_hash']}")
    if not result["ok"]:
        fail(f"audit log BROKEN after {result['entries']} intact entries: {result['problem']}")


# --- ota reports export ---------------------------------------------------------------------


def _period(kind: str, label: str | None) -> None:
    """A malformed quarter or week is a usage error (exit 2), found before asking the server."""
    from ota_server.clock import utc_now
    from ota_server.errors import InvalidInput
    from ota_server.regulator.common import quarter, week

    if label is None:
        return
    try:
        (quarter if kind == "quarter" else week)(label, utc_now())
    except InvalidInput as exc:
        raise typer.BadParameter(exc.message, param_hint=f"--{kind}") from exc


@regulator_reports_app.command("export")
def regulator_report_export(
    recall_id: Annotated[int, typer.Argument(min=1, help="The recall's id")],
    kind: Annotated[Kind, typer.Option(help="Which report")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="File to write")],
    fmt: Annotated[Format, typer.Option("--format", help="File format (every kind has all three)")] = "csv",
    quarter: Annotated[
        str | None, typer.Option(help="Completion report quarter, YYYYQn (default: the current one, to date)")
    ] = None,
    week: Annotated[
        str | None, typer.Option(help="VIN status ISO week, YYYY-Www (default: the current one, to date)")
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Write one recall's report, as the server makes it, to a file (the audit log: GET /api/v1/audit/export)."""
    _period("quarter", quarter)
    _period("week", week)
    with client_for(server, token) as client:
        body = client.regulator_report(recall_id, kind, fmt, quarter=quarter, week=week)
    try:
        out.write_bytes(body)
    except OSError as exc:
        fail(f"cannot write {out}: {exc}")
    typer.echo(f"wrote the {kind} report of recall {recall_id} to {out} ({len(body)} bytes, {fmt})")
