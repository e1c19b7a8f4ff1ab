"""``ota vehicles import|list|show|update|decommission|provision|revoke``: the fleet, through the REST API.

Plumbing from :mod:`ota_server.cli.common`; the CSV import is :mod:`ota_server.cli.vehicle_import`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from firmware_bundles.vin import normalize_vin
from ota_server.cli.api_client import ApiClient
from ota_server.cli.campaigns import coded, moment
from ota_server.cli.common import DEFAULT_SERVER, JsonOption, ServerOption, TokenOption, client_for, emit, table
from ota_server.cli.vehicle_import import vehicles_import

VinArgument = Annotated[str, typer.Argument(help="The car's VIN")]
PAGE = 500  # cars asked per request while the list walks the pages
# What `vehicles show --json` adds to the car from its timeline.
SHOWN_HISTORY = ("online", "campaigns", "entries", "discrepancies", "next_step", "action")


class Reason(StrEnum):
    EXPORTED = "exported"
    SCRAPPED = "scrapped"
    STOLEN = "stolen"
    OTHER = "other"


class Changeable(StrEnum):
    TIME_ZONE = "time_zone"
    MARKET = "market"
    OWNER_CONTACT = "owner_contact"


vehicles_app = typer.Typer(help="Vehicles: import, list, show, update, decommission; identity.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(vehicles_app, name="vehicles")
    vehicles_app.command("import")(vehicles_import)
    vehicles_app.command("list")(vehicles_list)
    vehicles_app.command("show")(vehicles_show)
    vehicles_app.command("update")(vehicles_update)
    vehicles_app.command("decommission")(vehicles_decommission)
    vehicles_app.command("provision")(vehicles_provision)
    vehicles_app.command("revoke")(vehicles_revoke)


def _walk(client: ApiClient, filters: dict[str, Any], most: int | None) -> list[dict[str, Any]]:
    """Every car the filters match (at most ``most``), following the server's cursor page by page."""
    cars: list[dict[str, Any]] = []
    cursor: str | None = None
    while most is None or len(cars) < most:
        want = PAGE if most is None else min(PAGE, most - len(cars))
        page = client.vehicles_page(filters, cursor, want)
        cars += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return cars


def _ecus(car: dict[str, Any]) -> str:
    """Each ECU's version, labelled declared until the car's own manifest spoke for it."""
    return ", ".join(
        f"{e['hardware_id']} {e['installed_version']}" + ("" if e.get("source") == "reported" else " (declared)")
        for e in car.get("ecus", [])
    )


def vehicles_list(
    model: Annotated[str | None, typer.Option(help="Only this model")] = None,
    model_year: Annotated[int | None, typer.Option(help="Only this model year")] = None,
    hardware_id: Annotated[str | None, typer.Option(help="Cars with an ECU of this hardware id")] = None,
    installed_version: Annotated[
        str | None, typer.Option(help="Cars with an ECU running this version (with --hardware-id: that ECU)")
    ] = None,
    recall: Annotated[str | None, typer.Option(help="A recall's id or campaign number (24V-123)")] = None,
    campaign: Annotated[int | None, typer.Option(min=1, help="Cars in this campaign")] = None,
    state: Annotated[
        str | None,
        typer.Option(
            help="The car's state in the campaign (e.g. failed, remedied); errors: failed, rolled_back or timed_out"
        ),
    ] = None,
    not_seen_since: Annotated[
        datetime | None,
        typer.Option("--not-seen-since", "--since", help="Cars silent since then (never seen included; UTC)"),
    ] = None,
    decommissioned: Annotated[
        bool | None, typer.Option("--decommissioned/--in-service", help="Only cars out of (or in) the fleet")
    ] = None,
    discrepancy: Annotated[
        str | None, typer.Option(help="Cars with a discrepancy on record: any, or a kind (e.g. unassigned_image)")
    ] = None,
    sort: Annotated[
        str | None, typer.Option(help="vin (the default), model, model_year, created_at or last_seen; -key descending")
    ] = None,
    most: Annotated[int | None, typer.Option("--max", min=1, help="Stop after this many cars")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The fleet, by VIN unless --sort says otherwise, every filter given applying (all pages unless --max)."""
    given = {
        "model": model,
        "model_year": model_year,
        "hardware_id": hardware_id,
        "installed_version": installed_version,
        "recall": recall,
        "campaign": campaign,
        "state": state,
        "not_seen_since": not_seen_since.isoformat() if not_seen_since else None,
        "decommissioned": None if decommissioned is None else str(decommissioned).lower(),
        "discrepancy": discrepancy,
        "sort": sort,
    }
    filters = {name: value for name, value in given.items() if value is not None}
    with client_for(server, token) as client:
        cars = _walk(client, filters, most)

    def human() -> None:  # one line per car: readable at any width, and greppable
        for c in cars:
            gone = f"  decommissioned {_gone(c)}" if c.get("decommissioned_at") else ""
            seen = str(c["last_seen"])[:19] if c.get("last_seen") else "never"
            typer.echo(f"{c['vin']}  {c['model']} {c['model_year']}  {_ecus(c)}  last seen {seen}{gone}")
        typer.echo(f"{len(cars)} vehicle(s)")

    emit(as_json, cars, human)


def _gone(car: dict[str, Any]) -> str:
    return f"{car['decommission_reason']} {str(car['decommissioned_at'])[:10]}"


def _runs(ecu: dict[str, Any]) -> str:
    """One ECU in a line: what it runs and who says so (the car's signed manifest, and when, or registration)."""
    if ecu.get("source") == "reported":
        said = f"signed report, {moment(ecu.get('reported_at'))}; declared {ecu.get('declared_version') or '-'}"
    else:
        said = "declared at registration, no signed report yet"
    return f"  ECU {ecu['serial']} ({ecu['hardware_id']}): runs {ecu['installed_version']} ({said})"


def vehicles_show(
    vin: VinArgument, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """One car: what is registered, what each ECU runs (signed report vs declared), its campaigns and timeline.

    The timeline is GET /api/v1/vehicles/VIN/timeline: every notice, report, deferral, failure, retry
    and operator record across campaigns, oldest first, and the next step in plain words.
    """
    with client_for(server, token) as client:
        car = client.vehicle(normalize_vin(vin))
        history: dict[str, Any] = client.call("GET", f"/api/v1/vehicles/{car['vin']}/timeline")

    def human() -> None:
        typer.echo(f"{car['vin']}  {car.get('make') or ''} {car['model']} {car['model_year']}".replace("  ", " "))
        for label, key in (("time zone", "time_zone"), ("market", "market"), ("owner contact", "owner_contact")):
            typer.echo(f"  {label}: {car.get(key) or '-'}")
        online = "online" if history.get("online") else "offline"
        typer.echo(f"  last seen: {moment(car.get('last_seen')) if car.get('last_seen') else 'never'} ({online})")
        if car.get("decommissioned_at"):
            detail = f" ({car['decommission_detail']})" if car.get("decommission_detail") else ""
            typer.echo(f"  decommissioned: {car['decommission_reason']}{detail} on {car['decommissioned_at']}")
        typer.echo(f"  next step: {history['next_step']}")
        for ecu in car["ecus"]:
            typer.echo(_runs(ecu))
        keys = ("campaign_id", "recall_number", "state", "reason", "wave", "next_step")
        rows = [[coded(c[k]) if k == "reason" else c[k] for k in keys] for c in history["campaigns"]]
        table("Campaigns", ["campaign", "recall", "state", "reason", "wave", "next step"], rows)
        entries = [[moment(e["at"]), e.get("recall_number"), e["source"], e["summary"]] for e in history["entries"]]
        table("Timeline", ["at", "recall", "by", "what"], entries)

    emit(as_json, {**car, **{k: history[k] for k in SHOWN_HISTORY}}, human)


def vehicles_update(
    vin: VinArgument,
    time_zone: Annotated[str | None, typer.Option(help="IANA zone, e.g. Europe/Berlin")] = None,
    market: Annotated[str | None, typer.Option(help="The market it is sold in, e.g. DE")] = None,
    owner_contact: Annotated[str | None, typer.Option(help="How to reach the owner")] = None,
    model_year: Annotated[
        int | None, typer.Option(help="A corrected model year (a dynamic recall it now matches takes the car)")
    ] = None,
    clear: Annotated[list[Changeable] | None, typer.Option(help="Clear this field (repeatable)")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a car's time zone, market, owner contact or (a correction) model year; nothing else may change."""
    changes: dict[str, Any] = {field.value: None for field in clear or []}
    given: dict[str, Any] = {
        "time_zone": time_zone,
        "market": market,
        "owner_contact": owner_contact,
        "model_year": model_year,
    }
    changes.update({name: value for name, value in given.items() if value is not None})
    if not changes:
        raise typer.BadParameter("give --time-zone, --market, --owner-contact, --model-year or --clear FIELD")
    with client_for(server, token) as client:
        car = client.update_vehicle(normalize_vin(vin), changes)
    shown = ", ".join(f"{name} {car.get(name) or '(cleared)'}" for name in sorted(changes))
    emit(as_json, car, lambda: typer.echo(f"{car['vin']}: {shown}"))


def vehicles_decommission(
    vin: VinArgument,
    reason: Annotated[Reason, typer.Option(help="Why it left the fleet")],
    detail: Annotated[str | None, typer.Option(help="What happened (needed for --reason other)")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take a car out of the fleet: no future recall takes it; in open campaigns it becomes unreachable."""
    with client_for(server, token) as client:
        answer = client.decommission(normalize_vin(vin), reason.value, detail)
    campaigns = ", ".join(str(c) for c in answer["removed_from"]) or "none"
    line = f"{answer['vehicle']['vin']} decommissioned ({reason.value}); unreachable in campaign(s): {campaigns}"
    emit(as_json, answer, lambda: typer.echo(line))


def vehicles_provision(
    vin: Annotated[str, typer.Argument(help="A registered vehicle's VIN")],
    out: Annotated[Path, typer.Option(help="Directory for the car's config bundle (agent.toml, keys, roots)")],
    server: ServerOption = DEFAULT_SERVER,
    certificate: Annotated[bool, typer.Option(help="Also issue an MQTT client certificate (TLS broker)")] = True,
    token: TokenOption = None,
) -> None:
    """Issue a car's report key and client certificate on the running server; write its config bundle.

    The private keys exist only in the bundle; provisioning again replaces the key (the old one is rejected).
    """
    from firmware_bundles.errors import ContractError
    from firmware_bundles.provisioning import write_bundle

    with client_for(server, token) as client:
        answer = client.provision_vehicle(normalize_vin(vin), certificate=certificate)
    try:
        path = write_bundle(out, answer)
    except (ContractError, ValueError) as exc:
        typer.echo(f"error: unexpected answer from {server}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(str(path))


def vehicles_revoke(
    vin: Annotated[str, typer.Argument(help="The car whose client certificate is revoked")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Revoke a car's MQTT client certificate (stolen, retired); the server rewrites the broker's CRL.

    The broker refuses the certificate once it has re-read the CRL (SIGHUP or restart).
    """
    with client_for(server, token) as client:
        answer = client.revoke_certificate(normalize_vin(vin))
    revoked = answer.get("revoked", [])
    typer.echo(f"revoked {len(revoked)} certificate(s): {', '.join(revoked) or '-'}")
    typer.echo("# make the broker read the new CRL: kill -HUP <mosquitto pid>")
