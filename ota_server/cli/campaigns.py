"""``ota campaigns pause|resume|cancel|retry|rollback|outcome|list|show|watch|vehicles``, by CAMPAIGN_ID.

A recall is launched and approved by its RECALL_ID: ``ota recalls launch|approve``
(:mod:`ota_server.cli.recalls`, which also keeps the old ``ota campaigns launch|approve`` working,
hidden, with a deprecation note). Waves are numbered from 1, as the API numbers them; reason codes
are shown in plain words with the code beside them (:mod:`ota_server.domain.reasons`).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from ota_server.cli.api_client import ApiClient
from ota_server.cli.common import (
    DEFAULT_SERVER,
    JsonOption,
    ServerOption,
    TokenOption,
    client_for,
    emit,
    table,
)
from ota_server.domain.reasons import said
from ota_server.domain.states import ERRORS, StateWord, UnreachableReason, VinState

CampaignId = Annotated[int, typer.Argument(min=1, metavar="CAMPAIGN_ID", help="The campaign's id (ota campaigns list)")]

campaigns_app = typer.Typer(
    help="Campaigns, by CAMPAIGN_ID: pause, resume, cancel, retry, rollback, outcome, list, show, watch, vehicles. "
    "Launch and approve a recall with `ota recalls launch|approve RECALL_ID`.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(campaigns_app, name="campaigns")


def moment(value: str | None) -> str:
    """An API instant (ISO 8601) as a person reads it: ``2026-12-05 08:00 UTC``."""
    if not value:
        return "-"
    at = datetime.fromisoformat(value)
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y-%m-%d %H:%M UTC")


def status_word(campaign: dict[str, Any]) -> str:
    """The campaign's status in one word: ``scheduled`` while an active campaign's planned start is ahead."""
    return "scheduled" if campaign.get("scheduled") and campaign["status"] == "active" else str(campaign["status"])


def with_reason(status: str, reason: str | None) -> str:
    """``paused (why)``; a reason that starts with the status word is said alone (``paused by olga: why``)."""
    if not reason:
        return status
    return reason if reason.startswith(f"{status} ") else f"{status} ({reason})"


def status_words(campaign: dict[str, Any]) -> str:
    """``active``, ``paused by olga: why``..., and ``scheduled: starts at <time>`` while a planned start is ahead."""
    said = with_reason(str(campaign["status"]), campaign.get("status_reason"))
    if not campaign.get("scheduled"):
        return said
    starts = f"starts at {moment(campaign.get('starts_at'))}"
    return f"scheduled: {starts}" if campaign["status"] == "active" else f"{said}; {starts}"


def campaign_line(campaign: dict[str, Any]) -> str:
    return (
        f"campaign {campaign['id']} of recall {campaign['recall_id']}: {status_words(campaign)}, "
        f"{campaign['population']} cars, wave {campaign['current_wave']}"
    )


coded = said  # a reason code in plain words with the code beside it: ``the download failed (download_failed)``


ReasonOption = Annotated[str, typer.Option(help="Why (kept with the status and in the audit log)")]


def _control(campaign_id: int, action: str, reason: str, server: str, token: str | None, as_json: bool) -> None:
    with client_for(server, token) as client:
        result = client.control(campaign_id, action, reason)
    campaign = result.get("campaign", result)
    touched = f"; {result['vehicles']} cars" if "vehicles" in result else ""
    if action == "retry-failed" and result.get("vehicles") and campaign["status"] == "paused":
        touched += f" (the campaign stays paused: `ota campaigns resume {campaign_id}` notifies them)"
    emit(as_json, result, lambda: typer.echo(f"{action}: " + campaign_line(campaign) + touched))


@campaigns_app.command("pause")
def campaigns_pause(
    campaign_id: CampaignId,
    reason: ReasonOption = "",
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop notifying cars (cars already installing carry on)."""
    _control(campaign_id, "pause", reason, server, token, as_json)


@campaigns_app.command("resume")
def campaigns_resume(
    campaign_id: CampaignId,
    reason: ReasonOption = "",
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Notify again after a pause."""
    _control(campaign_id, "resume", reason, server, token, as_json)


@campaigns_app.command("cancel")
def campaigns_cancel(
    campaign_id: CampaignId,
    reason: ReasonOption = "",
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel: withdraw every car that has not started."""
    _control(campaign_id, "cancel", reason, server, token, as_json)


@campaigns_app.command("retry")
def campaigns_retry(
    campaign_id: CampaignId,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give every failed, rolled-back or timed-out car a new notice now."""
    _control(campaign_id, "retry-failed", "", server, token, as_json)


class Outcome(StrEnum):
    REMEDIED_AT_DEALER = "remedied_at_dealer"
    INSPECTED_NOT_NEEDED = "inspected_not_needed"
    UNREACHABLE = "unreachable"


@campaigns_app.command("outcome")
def campaigns_outcome(
    campaign_id: CampaignId,
    vin: Annotated[str, typer.Argument(metavar="VIN", help="The car")],
    outcome: Annotated[Outcome, typer.Option(help="What happened to the car outside the air")],
    evidence: Annotated[str, typer.Option(help="What shows it (repair order, inspection note...)")],
    reason: Annotated[
        UnreachableReason | None, typer.Option(help="For unreachable: exported, stolen, scrapped, other")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="e.g. the dealer's repair order number")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record a car's outcome (fixed at a dealer, inspected and not needed, unreachable); audited."""
    body: dict[str, Any] = {"outcome": outcome.value, "evidence": evidence}
    body |= {"reason": reason.value} if reason else {}
    body |= {"reference": reference} if reference else {}
    with client_for(server, token) as client:
        record = client.call("POST", f"/api/v1/campaigns/{campaign_id}/vehicles/{vin}/outcome", json=body)
    why = f": {coded(record['reason'])}" if record.get("reason") else ""
    line = f"campaign {campaign_id}, {record['vin']}: {record['state']}{why}, recorded by {record['recorded_by']}"
    emit(as_json, record, lambda: typer.echo(line))


class Reach(StrEnum):
    WAVE = "wave"
    CAMPAIGN = "campaign"


@campaigns_app.command("rollback")
def campaigns_rollback(
    campaign_id: CampaignId,
    reach: Annotated[
        Reach | None,
        typer.Option(
            help="The open wave's remedied cars, or the whole campaign's (default: the recall's rollback_reach)"
        ),
    ] = None,
    reason: ReasonOption = "",
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Roll a paused campaign back by hand: the recall's rollback release to its remedied cars."""
    with client_for(server, token) as client:
        child = client.roll_back(campaign_id, reach.value if reach else None, reason)
    emit(as_json, child, lambda: typer.echo(f"rollback of campaign {campaign_id}: " + campaign_line(child)))


@campaigns_app.command("list")
def campaigns_list(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Every campaign, remedy and rollback."""
    with client_for(server, token) as client:
        campaigns = client.campaigns()
    columns = ["id", "recall", "release", "kind", "status", "cars", "wave", "starts", "launched"]
    rows = [
        [
            c["id"],
            c["recall_id"],
            c["release_id"],
            c["kind"],
            status_word(c),
            c["population"],
            c["current_wave"],
            moment(c.get("starts_at")),
            moment(c["launched_at"]),
        ]
        for c in campaigns
    ]
    emit(as_json, campaigns, lambda: table("Campaigns", columns, rows))


@campaigns_app.command("show")
def campaigns_show(
    campaign_id: CampaignId,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One campaign and its progress."""
    with client_for(server, token) as client:
        campaign = client.campaign(campaign_id)
        progress = client.progress(campaign_id)

    def human() -> None:
        from rich.console import Console

        typer.echo(campaign_line(campaign))
        Console().print(progress_view(progress))

    emit(as_json, {"campaign": campaign, "progress": progress}, human)


def progress_view(progress: dict[str, Any]) -> Any:
    """A rich renderable: one bar per state and per wave, failures by reason."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    population = max(1, int(progress["population"]))
    if progress.get("scheduled"):
        where = f"not started, starts at {moment(progress.get('starts_at'))}"
    else:
        where = f"{'done' if progress.get('done') else 'in progress'} · wave {progress['current_wave']}"
    status = with_reason(status_word(progress), progress.get("status_reason"))
    header = Text(
        f"campaign {progress['campaign_id']} · recall {progress['recall_number']} · {progress['population']} cars · "
        f"{status} · {where} · notices {progress.get('notices_published', 0)}",
        style="bold",
    )
    states = Table(title="By state", show_header=True)
    states.add_column("state")
    states.add_column("progress", min_width=30)
    states.add_column("cars", justify="right")
    for state, count in sorted(progress["counts"].items(), key=lambda item: -item[1]):
        if count:
            states.add_row(state, ProgressBar(total=population, completed=count, width=30), str(count))
    parts: list[Any] = [header, states]
    if progress.get("waves"):
        waves = Table(title="By wave (remedied of size)", show_header=True)
        for column in ("wave", "remedied", "cars", "errors", "gate"):
            waves.add_column(column)
        for wave in progress["waves"]:
            size = max(1, int(wave["size"]))
            gate = wave["gate"] if wave.get("opened") else "not opened"
            waves.add_row(
                str(wave["number"]),
                ProgressBar(total=size, completed=wave["remedied"], width=30),
                f"{wave['remedied']}/{wave['size']} (needs {wave['needed']})",
                str(wave["errors"]),
                gate,
            )
        parts.append(waves)
    failures = progress.get("failures_by_reason") or {}
    if failures:
        parts.append(Text("failures: " + ", ".join(f"{coded(k)}: {v}" for k, v in sorted(failures.items()))))
    unreachable = progress.get("unreachable_by_reason") or {}
    if unreachable:
        parts.append(Text("unreachable: " + ", ".join(f"{coded(k)}: {v}" for k, v in sorted(unreachable.items()))))
    return Group(*parts)


def _finished(progress: dict[str, Any]) -> bool:
    return bool(progress.get("done")) or progress.get("status") == "cancelled"


@campaigns_app.command("watch")
def campaigns_watch(
    campaign_id: CampaignId,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between polls")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit")] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Live progress bars per state and per wave until the campaign is done (or Ctrl-C).

    With --json, one progress snapshot per line (JSON lines) at each poll.
    """
    with client_for(server, token) as client:
        if once:
            progress = client.progress(campaign_id)
            if as_json:
                typer.echo(json.dumps(progress, sort_keys=True, default=str))
            else:
                from rich.console import Console

                Console().print(progress_view(progress))
            return
        try:
            if as_json:
                while True:
                    progress = client.progress(campaign_id)
                    typer.echo(json.dumps(progress, sort_keys=True, default=str))
                    if _finished(progress):
                        return
                    time.sleep(interval)
            from rich.live import Live

            progress = client.progress(campaign_id)
            with Live(progress_view(progress), refresh_per_second=4) as live:
                while not _finished(progress):
                    time.sleep(interval)
                    progress = client.progress(campaign_id)
                    live.update(progress_view(progress))
        except KeyboardInterrupt:
            typer.echo("stopped watching (the campaign carries on)", err=True)


VEHICLE_COLUMNS = [
    "vin",
    "model",
    "model_year",
    "state",
    "wave",
    "reason_text",
    "attempts",
    "next_try_at",
    "updated_at",
]


def errors_hint(client: ApiClient, campaign_id: int, filters: dict[str, Any], asked: list[str]) -> str | None:
    """When the error states asked for match no car but the others do: where those cars are (``--state errors``)."""
    if StateWord.ERRORS in asked or not any(word in ERRORS for word in asked):
        return None
    others = [s for s in VinState if s in ERRORS and s not in asked]
    cars = client.campaign_vehicles(campaign_id, {**filters, "state": [s.value for s in others]}) if others else []
    if not cars:
        return None
    where = "/".join(s.value for s in others if any(c["state"] == s for c in cars))
    return f"no cars in state {'/'.join(asked)}; {len(cars)} car{'s' * (len(cars) != 1)} in {where}: use --state errors"


@campaigns_app.command("vehicles")
def campaigns_vehicles(
    campaign_id: CampaignId,
    state: Annotated[
        list[StateWord] | None,
        typer.Option(
            help="Only cars in this state (repeat for several); errors: failed, rolled_back and timed_out, "
            "what the progress summary counts as failed",
        ),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Only cars with this reason code (e.g. download_failed)")] = None,
    wave: Annotated[int | None, typer.Option(min=1, help="Only cars of this wave (from 1)")] = None,
    ecu: Annotated[str | None, typer.Option(help="Only cars with this affected ECU (serial or hardware id)")] = None,
    vin: Annotated[str | None, typer.Option(help="Only VINs starting with this")] = None,
    sort: Annotated[str | None, typer.Option(help="vin, state, updated_at or next_try_at; -key descending")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Every matching car as CSV (the server's export)")] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every car of a campaign (all pages): state, wave, reason in plain words, when it is tried again."""
    asked = [word.value for word in state or ()]
    given = {"state": asked, "reason": reason, "wave": wave, "ecu": ecu, "vin": vin, "sort": sort}
    filters = {k: v for k, v in given.items() if v}
    with client_for(server, token) as client:
        if as_csv:
            typer.echo(client.campaign_vehicles_csv(campaign_id, filters).decode(), nl=False)
            return
        cars = client.campaign_vehicles(campaign_id, filters)
        hint = None if cars or not asked else errors_hint(client, campaign_id, filters, asked)
    if hint:
        typer.echo(hint, err=True)

    def human() -> None:
        rows = [[c.get(k) for k in VEHICLE_COLUMNS] for c in cars]
        for row, car in zip(rows, cars, strict=True):
            if car.get("reason"):
                row[VEHICLE_COLUMNS.index("reason_text")] = f"{car['reason_text']} ({car['reason']})"
        table(f"Campaign {campaign_id}: {len(cars)} cars", VEHICLE_COLUMNS, rows)

    emit(as_json, cars, human)
