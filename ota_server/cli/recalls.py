"""``ota recalls create|list|launch|approve``: file a recall from YAML or JSON, list, launch it (REST API).

A recall is launched and approved by its RECALL_ID; what it starts is a campaign, acted on by its
CAMPAIGN_ID (:mod:`ota_server.cli.campaigns`). ``ota campaigns launch|approve RECALL_ID``, the old
spellings, still work: hidden from help, they say on stderr that they are deprecated and do the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ota_server.cli.campaigns import campaign_line, campaigns_app
from ota_server.cli.common import (
    DEFAULT_SERVER,
    JsonOption,
    ServerOption,
    TokenOption,
    client_for,
    emit,
    table,
)

RecallId = Annotated[int, typer.Argument(min=1, metavar="RECALL_ID", help="The recall's id (ota recalls list)")]

recalls_app = typer.Typer(
    help="Recalls, by RECALL_ID: create from YAML or JSON, list, launch, approve a launch.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(recalls_app, name="recalls")


def _load_document(path: Path) -> dict[str, Any]:
    """Parse YAML or JSON (by suffix; YAML otherwise, a superset of JSON). The server validates the rest."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="FILE") from exc
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{path} does not parse: {exc}", param_hint="FILE") from exc
    if not isinstance(document, dict):
        raise typer.BadParameter(f"{path}: expected a mapping of recall fields at the top", param_hint="FILE")
    return document


@recalls_app.command("create")
def recalls_create(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The recall, as YAML or JSON")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """File a recall (campaign number, defect, remedy, release, population, rollout...) from a file."""
    document = _load_document(file)
    # YAML reads dates as date objects; the API wants ISO strings.
    body = json.loads(json.dumps(document, default=str))
    with client_for(server, token) as client:
        recall = client.create_recall(body)
    emit(
        as_json,
        recall,
        lambda: typer.echo(
            f"recall {recall['id']} ({recall['campaign_number']}): {recall['affected_count']} cars affected now"
        ),
    )


@recalls_app.command("list")
def recalls_list(server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Every recall, with its campaign once launched."""
    with client_for(server, token) as client:
        recalls = client.recalls()
    rows = [
        [
            r["id"],
            r["campaign_number"],
            r["title"],
            r["release_id"],
            r["affected_count"],
            "yes" if r.get("safety_recall") else "no",
            r.get("campaign_id") or (r.get("launch_request") or {}).get("state", ""),
        ]
        for r in recalls
    ]
    columns = ["id", "number", "title", "release", "affected", "safety", "campaign"]
    emit(as_json, recalls, lambda: table("Recalls", columns, rows))


@recalls_app.command("launch")
def recalls_launch(
    recall_id: RecallId, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Launch a recall's campaign; a safety recall's launch waits for another person's `ota recalls approve`."""
    with client_for(server, token) as client:
        result = client.launch(recall_id)
    if "requested_by" in result:
        message = f"launch of recall {recall_id} requested by {result['requested_by']}: awaiting approval"
        emit(as_json, result, lambda: typer.echo(message))
    else:
        emit(as_json, result, lambda: typer.echo("launched " + campaign_line(result)))


@recalls_app.command("approve")
def recalls_approve(
    recall_id: RecallId, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Approve (as an approver other than the requester) a safety recall's requested launch; it launches."""
    with client_for(server, token) as client:
        campaign = client.approve(recall_id)
    emit(as_json, campaign, lambda: typer.echo("approved and launched " + campaign_line(campaign)))


def _deprecated(verb: str) -> None:
    typer.echo(
        f"warning: `ota campaigns {verb} RECALL_ID` is deprecated; use `ota recalls {verb} RECALL_ID` "
        "(campaign commands take a CAMPAIGN_ID)",
        err=True,
    )


@campaigns_app.command("launch", hidden=True)
def deprecated_campaigns_launch(
    recall_id: RecallId, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Deprecated spelling of `ota recalls launch RECALL_ID`."""
    _deprecated("launch")
    recalls_launch(recall_id, server, token, as_json)


@campaigns_app.command("approve", hidden=True)
def deprecated_campaigns_approve(
    recall_id: RecallId, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Deprecated spelling of `ota recalls approve RECALL_ID`."""
    _deprecated("approve")
    recalls_approve(recall_id, server, token, as_json)
