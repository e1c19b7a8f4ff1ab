"""``ota webhooks add|list|remove|resume|deliveries``, through the REST API (docs/webhooks.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ota_server.cli.common import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption, client_for, emit, table

webhooks_app = typer.Typer(help="Webhooks: the server's events POSTed, signed, to other systems.", no_args_is_help=True)
IdArgument = Annotated[int, typer.Argument(help="The webhook's id (ota webhooks list)")]


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")
    webhooks_app.command("add")(webhooks_add)
    webhooks_app.command("list")(webhooks_list)
    webhooks_app.command("remove")(webhooks_remove)
    webhooks_app.command("resume")(webhooks_resume)
    webhooks_app.command("deliveries")(webhooks_deliveries)


def webhooks_add(
    url: Annotated[str, typer.Argument(help="http(s) URL to POST each event to")],
    event: Annotated[
        list[str] | None, typer.Option(help="An event type to send (repeatable); none given: every type")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help="The signing secret (16-128 characters); absent: the server makes one")
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a webhook; its secret is shown this once."""
    body: dict[str, Any] = {"url": url, "events": event or None}
    if secret is not None:
        body["secret"] = secret
    with client_for(server, token) as client:
        hook = client.call("POST", "/api/v1/webhooks", json=body)

    def human() -> None:
        typer.echo(f"webhook {hook['id']}: {hook['url']} ({', '.join(hook['events'] or ['every event'])})")
        typer.echo(f"secret (shown once, keep it to check X-OTA-Signature): {hook['secret']}")

    emit(as_json, hook, human)


def webhooks_list(
    sort: Annotated[
        str | None, typer.Option(help="id (the default), created_at, status or consecutive_failures; -key descending")
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every webhook with its status (paused: a dead endpoint, see ``ota webhooks resume``)."""
    with client_for(server, token) as client:
        found = client.every("/api/v1/webhooks", {"sort": sort} if sort else None)

    def human() -> None:
        rows = [
            [w["id"], w["url"], ", ".join(w["events"] or ["all"]), w["status"], w["paused_reason"] or ""] for w in found
        ]
        table("Webhooks", ["id", "url", "events", "status", "why paused"], rows)

    emit(as_json, found, human)


def _act(method: str, path: str, server: str, token: str | None, as_json: bool, say: Callable[[Any], str]) -> None:
    with client_for(server, token) as client:
        hook = client.call(method, path)
    emit(as_json, hook, lambda: typer.echo(say(hook)))


def webhooks_remove(
    webhook_id: IdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a webhook and its deliveries."""
    path = f"/api/v1/webhooks/{webhook_id}"
    _act("DELETE", path, server, token, as_json, lambda gone: f"webhook {gone['id']} removed ({gone['url']})")


def webhooks_resume(
    webhook_id: IdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send to a paused webhook again."""
    path = f"/api/v1/webhooks/{webhook_id}/resume"
    _act("POST", path, server, token, as_json, lambda hook: f"webhook {hook['id']} is {hook['status']}")


def webhooks_deliveries(
    webhook_id: IdArgument,
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed")] = None,
    sort: Annotated[
        str | None, typer.Option(help="created_at, status or attempts; -key descending (default -created_at)")
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The webhook's deliveries, newest first: status, attempts, next try, the receiver's last answer."""
    with client_for(server, token) as client:
        given = {"status": status, "sort": sort}
        found = client.every(f"/api/v1/webhooks/{webhook_id}/deliveries", {k: v for k, v in given.items() if v})

    def human() -> None:
        rows = [
            [
                d["id"],
                d["event_type"],
                d["status"],
                d["attempts"],
                d["last_status_code"] or "",
                d["last_error"] or "",
                d["next_attempt_at"] or "",
            ]
            for d in found
        ]
        table(f"Deliveries of webhook {webhook_id}", ["id", "event", "status", "tries", "code", "error", "next"], rows)

    emit(as_json, found, human)
