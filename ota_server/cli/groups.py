"""``ota vehicles tag|untag`` and ``ota groups create|list|show|remove``, through the REST API."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import quote

import typer

from firmware_bundles.vin import normalize_vin
from ota_server.cli.common import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption, client_for, emit, table

groups_app = typer.Typer(help="Saved groups: named filters over the fleet, counted when read.", no_args_is_help=True)
GroupArgument = Annotated[str, typer.Argument(help="The group's name (any case) or id")]
PAGE = 100  # groups asked per request while the list walks the pages


class Basis(StrEnum):
    INSTALLED = "installed"
    REPORTED = "reported"
    DECLARED = "declared"


def register(app: typer.Typer) -> None:
    """The groups commands, and ``tag``/``untag`` on ``ota vehicles`` (registered before this)."""
    from ota_server.cli.vehicles import vehicles_app

    app.add_typer(groups_app, name="groups")
    groups_app.command("create")(groups_create)
    groups_app.command("list")(groups_list)
    groups_app.command("show")(groups_show)
    groups_app.command("remove")(groups_remove)
    vehicles_app.command("tag")(vehicles_tag)
    vehicles_app.command("untag")(vehicles_untag)


def _group_path(ref: str) -> str:
    return f"/api/v1/groups/{quote(ref.strip(), safe='')}"


def vehicles_tag(
    vin: Annotated[str, typer.Argument(help="The car's VIN")],
    tags: Annotated[list[str], typer.Argument(help="One or more tags (letters, digits, . _ : -; stored lower case)")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put tags on a car (a tag it has already is kept)."""
    car: dict[str, Any] = {}
    with client_for(server, token) as client:
        for tag in tags:
            car = client.call("PUT", f"/api/v1/vehicles/{normalize_vin(vin)}/tags/{quote(tag, safe='')}")
    emit(as_json, car, lambda: typer.echo(f"{car['vin']}: tags {', '.join(car['tags'])}"))


def vehicles_untag(
    vin: Annotated[str, typer.Argument(help="The car's VIN")],
    tag: Annotated[str, typer.Argument(help="The tag to take off")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take a tag off a car."""
    with client_for(server, token) as client:
        car = client.call("DELETE", f"/api/v1/vehicles/{normalize_vin(vin)}/tags/{quote(tag, safe='')}")
    emit(as_json, car, lambda: typer.echo(f"{car['vin']}: tags {', '.join(car['tags']) or '-'}"))


def _range(low: Any, high: Any, names: tuple[str, str]) -> dict[str, Any] | None:
    given = {names[0]: low, names[1]: high}
    kept = {k: v.isoformat() if isinstance(v, date) else v for k, v in given.items() if v is not None}
    return kept or None


def groups_create(
    name: Annotated[str, typer.Argument(help="Unique whatever the case; not only digits")],
    model: Annotated[list[str] | None, typer.Option(help="A model (repeatable: any of them)")] = None,
    year_from: Annotated[int | None, typer.Option(help="Model years from")] = None,
    year_to: Annotated[int | None, typer.Option(help="Model years up to (inclusive)")] = None,
    vin_from: Annotated[
        str | None, typer.Option(help="VINs from (with --vin-to; the check digit is not compared)")
    ] = None,
    vin_to: Annotated[str | None, typer.Option(help="VINs up to (inclusive)")] = None,
    produced_from: Annotated[str | None, typer.Option(help="Production dates from (YYYY-MM-DD)")] = None,
    produced_to: Annotated[str | None, typer.Option(help="Production dates up to (YYYY-MM-DD)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="The car has this tag (repeatable: all of them)")] = None,
    any_tag: Annotated[list[str] | None, typer.Option(help="The car has one of these tags (repeatable)")] = None,
    version_min: Annotated[str | None, typer.Option(help="An ECU runs at least this version")] = None,
    version_max: Annotated[str | None, typer.Option(help="An ECU runs at most this version")] = None,
    version_hardware: Annotated[str | None, typer.Option(help="The version bounds hold for this hardware id")] = None,
    version_basis: Annotated[
        Basis, typer.Option(help="installed (car's word, else registration), reported (signed only), declared")
    ] = Basis.INSTALLED,
    description: Annotated[str, typer.Option(help="What the group is for")] = "",
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Save a named filter over the fleet; every option given must hold. Prints its count now."""
    if (vin_from is None) != (vin_to is None):
        raise typer.BadParameter("give both --vin-from and --vin-to")
    versions = _range(version_min, version_max, ("min", "max"))
    if versions is None and version_hardware is not None:
        versions = {}
    if versions is not None:
        versions["basis"] = version_basis.value
        if version_hardware is not None:
            versions["hardware_id"] = version_hardware
    spec = {
        "models": model or None,
        "model_years": _range(year_from, year_to, ("min", "max")),
        "vin_range": _range(vin_from, vin_to, ("first", "last")),
        "production_dates": _range(produced_from, produced_to, ("start", "end")),
        "tags_all": tag or None,
        "tags_any": any_tag or None,
        "installed_versions": versions,
    }
    body = {"name": name, "description": description, "filter": {k: v for k, v in spec.items() if v is not None}}
    with client_for(server, token) as client:
        group = client.call("POST", "/api/v1/groups", json=body)
    emit(as_json, group, lambda: typer.echo(f"group {group['id']} {group['name']!r}: {group['vehicle_count']} car(s)"))


def groups_list(server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Every saved group by name, with its count now."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    with client_for(server, token) as client:
        while True:
            params: dict[str, Any] = {"limit": PAGE} | ({"cursor": cursor} if cursor else {})
            page = client.call("GET", "/api/v1/groups", params=params)
            found += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break

    def human() -> None:
        rows = [[g["id"], g["name"], g["vehicle_count"], _summary(g["filter"])] for g in found]
        table("Groups", ["id", "name", "cars", "filter"], rows)

    emit(as_json, found, human)


def _summary(spec: dict[str, Any]) -> str:
    return "; ".join(f"{k} {v}" for k, v in spec.items() if v is not None) or "(every car)"


def groups_show(
    group: GroupArgument, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """One group: its filter and how many cars it matches now."""
    with client_for(server, token) as client:
        found = client.call("GET", _group_path(group))

    def human() -> None:
        typer.echo(f"group {found['id']} {found['name']!r}: {found['vehicle_count']} car(s) now")
        if found.get("description"):
            typer.echo(f"  {found['description']}")
        typer.echo(f"  filter: {_summary(found['filter'])}")
        typer.echo(f"  saved by {found['created_by'] or '-'} at {found['created_at']}")

    emit(as_json, found, human)


def groups_remove(
    group: GroupArgument, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Delete a group (recalls filed on it keep the copy of its filter they took)."""
    with client_for(server, token) as client:
        gone = client.call("DELETE", _group_path(group))
    emit(as_json, gone, lambda: typer.echo(f"removed group {gone['id']} {gone['name']!r}"))
