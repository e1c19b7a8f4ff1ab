"""``ota campaigns launch|approve|pause|resume|cancel|retry|rollback|list|show|watch|vehicles``: a recall's rollout."""

from __future__ import annotations

import json
import time
from enum import StrEnum
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

CampaignId = Annotated[int, typer.Argument(min=1, help="The campaign's id")]
RecallId = Annotated[int, typer.Argument(min=1, help="The recall's id")]

campaigns_app = typer.Typer(
    help="Campaigns: launch, approve, pause, resume, cancel, retry, rollback, list, show, watch.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(campaigns_app, name="campaigns")


def _campaign_line(campaign: dict[str, Any]) -> str:
    reason = f" ({campaign['status_reason']})" if campaign.get("status_reason") else ""
    return (
        f"campaign {campaign['id']} of recall {campaign['recall_id']}: {campaign['status']}{reason}, "
        f"{campaign['population']} cars, wave {campaign.get('current_wave', 0)}"
    )


@campaigns_app.command("launch")
def campaigns_launch(
    recall_id: RecallId, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Launch a recall; a safety recall's launch waits for another person's `ota campaigns approve`."""
    with client_for(server, token) as client:
        result = client.launch(recall_id)
    if "requested_by" in result:
        message = f"launch of recall {recall_id} requested by {result['requested_by']}: awaiting approval"
        emit(as_json, result, lambda: typer.echo(message))
    else:
        emit(as_json, result, lambda: typer.echo("launched " + _campaign_line(result)))


@campaigns_app.command("approve")
def campaigns_approve(
    recall_id: RecallId, server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Approve (as an approver other than the requester) a safety recall's requested launch; it launches."""
    with client_for(server, token) as client:
        campaign = client.approve(recall_id)
    emit(as_json, campaign, lambda: typer.echo("approved and launched " + _campaign_line(campaign)))


ReasonOption = Annotated[str, typer.Option(help="Why (kept with the status and in the audit log)")]


def _control(campaign_id: int, action: str, reason: str, server: str, token: str | None, as_json: bool) -> None:
    with client_for(server, token) as client:
        result = client.control(campaign_id, action, reason)
    campaign = result.get("campaign", result)
    touched = f"; {result['vehicles']} cars" if "vehicles" in result else ""
    emit(as_json, result, lambda: typer.echo(f"{action}: " + _campaign_line(campaign) + touched))


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
    emit(as_json, child, lambda: typer.echo(f"rollback of campaign {campaign_id}: " + _campaign_line(child)))


@campaigns_app.command("list")
def campaigns_list(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Every campaign, remedy and rollback."""
    with client_for(server, token) as client:
        campaigns = client.campaigns()
    columns = ["id", "recall_id", "release_id", "kind", "status", "population", "current_wave", "launched_at"]
    emit(as_json, campaigns, lambda: table("Campaigns", columns, [[c.get(k) for k in columns] for c in campaigns]))


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

        typer.echo(_campaign_line(campaign))
        Console().print(progress_view(progress))

    emit(as_json, {"campaign": campaign, "progress": progress}, human)


def progress_view(progress: dict[str, Any]) -> Any:
    """A rich renderable: one bar per state and per wave, failures by reason."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    population = max(1, int(progress["population"]))
    done = "done" if progress.get("done") else "in progress"
    reason = f" ({progress['status_reason']})" if progress.get("status_reason") else ""
    header = Text(
        f"campaign {progress['campaign_id']} · recall {progress['recall_number']} · {progress['population']} cars · "
        f"{progress.get('status', 'active')}{reason} · {done} · notices {progress.get('notices_published', 0)}",
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
                str(wave["index"]),
                ProgressBar(total=size, completed=wave["remedied"], width=30),
                f"{wave['remedied']}/{wave['size']} (needs {wave['needed']})",
                str(wave["errors"]),
                gate,
            )
        parts.append(waves)
    failures = progress.get("failures_by_reason") or {}
    if failures:
        parts.append(Text("failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items()))))
    unreachable = progress.get("unreachable_by_reason") or {}
    if unreachable:
        parts.append(Text("unreachable: " + ", ".join(f"{k} {v}" for k, v in sorted(unreachable.items()))))
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


@campaigns_app.command("vehicles")
def campaigns_vehicles(
    campaign_id: CampaignId,
    state: Annotated[list[str] | None, typer.Option(help="Only cars in this state (repeat for several)")] = None,
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
    given = {"state": state, "reason": reason, "wave": wave, "ecu": ecu, "vin": vin, "sort": sort}
    filters = {k: v for k, v in given.items() if v}
    with client_for(server, token) as client:
        if as_csv:
            typer.echo(client.campaign_vehicles_csv(campaign_id, filters).decode(), nl=False)
            return
        cars = client.campaign_vehicles(campaign_id, filters)

    def human() -> None:
        rows = [[c.get(k) for k in VEHICLE_COLUMNS] for c in cars]
        for row, car in zip(rows, cars, strict=True):
            if car.get("reason"):
                row[VEHICLE_COLUMNS.index("reason_text")] = f"{car['reason_text']} ({car['reason']})"
        table(f"Campaign {campaign_id}: {len(cars)} cars", VEHICLE_COLUMNS, rows)

    emit(as_json, cars, human)
