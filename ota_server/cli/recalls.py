"""``ota recalls create|list``: file a recall from a YAML or JSON document, list them (REST API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ota_server.cli.common import (
    DEFAULT_SERVER,
    JsonOption,
    ServerOption,
    TokenOption,
    client_for,
    emit,
    table,
)

recalls_app = typer.Typer(help="Recalls: create from YAML or JSON, list.", no_args_is_help=True)


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
