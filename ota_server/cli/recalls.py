"""The operator's commands over the REST API: ``ota releases``, ``ota vehicles import``, ``ota recalls``,
``ota campaigns``.

Each takes ``--server`` (env ``OTA_SERVER``, default http://127.0.0.1:8000), ``--token`` (env
``OTA_TOKEN``) and ``--json``. Exit codes: 0 done, 1 the server refused (HTTP status and its detail
on stderr) or could not be reached, 2 a usage error (bad option, unreadable file).
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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
CampaignId = Annotated[int, typer.Argument(min=1, help="The campaign's id")]
RecallId = Annotated[int, typer.Argument(min=1, help="The recall's id")]

releases_app = typer.Typer(help="Releases: build a bundle, upload it, list them.", no_args_is_help=True)
recalls_app = typer.Typer(help="Recalls: create from YAML or JSON, list.", no_args_is_help=True)
campaigns_app = typer.Typer(
    help="Campaigns: launch, approve, pause, resume, cancel, retry, list, show, watch.", no_args_is_help=True
)

CSV_REQUIRED = (
    "vin",
    "make",
    "model",
    "model_year",
    "production_date",
    "ecu_serial",
    "hardware_id",
    "installed_version",
)
CSV_OPTIONAL = ("time_zone",)


def register(app: typer.Typer, vehicles_app: typer.Typer) -> None:
    """Add the operator commands to the ``ota`` app (``vehicles import`` joins ``vehicles provision``)."""
    app.add_typer(releases_app, name="releases")
    app.add_typer(recalls_app, name="recalls")
    app.add_typer(campaigns_app, name="campaigns")
    vehicles_app.command("import")(vehicles_import)


# --- plumbing ------------------------------------------------------------------------


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
        shown.add_column(column)
    for row in rows:
        shown.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(shown)


# --- ota releases --------------------------------------------------------------------


@releases_app.command("build")
def releases_build(
    image: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True, help="The firmware image")],
    hardware_id: Annotated[str, typer.Option(help="The ECU hardware id it is for")],
    version: Annotated[str, typer.Option(help="The image's version")],
    counter: Annotated[int, typer.Option(min=0, help="Release counter (anti-rollback)")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="The bundle file to write")],
    as_json: JsonOption = False,
) -> None:
    """Pack an image into a bundle (offline: no server needed)."""
    from firmware_bundles.bundle import build_bundle
    from firmware_bundles.errors import ContractError

    try:
        built = build_bundle(image.read_bytes(), hardware_id, version, counter)
    except ContractError as exc:
        raise typer.BadParameter(str(exc)) from exc
    out.write_bytes(built.data)
    manifest = built.manifest
    data = {
        "bundle": str(out),
        "bytes": len(built.data),
        "hardware_id": manifest.hardware_id,
        "version": manifest.version,
        "release_counter": manifest.release_counter,
        "image_sha256": manifest.image_sha256,
    }
    emit(
        as_json,
        data,
        lambda: typer.echo(f"wrote {out} ({len(built.data)} bytes, image sha256 {manifest.image_sha256})"),
    )


@releases_app.command("upload")
def releases_upload(
    bundle: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The bundle file")],
    hardware_id: Annotated[str, typer.Option(help="The ECU hardware id it is for")],
    version: Annotated[str, typer.Option(help="The image's version")],
    counter: Annotated[int, typer.Option(min=0, help="Release counter (anti-rollback)")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a bundle as a release (pending until `ota release sign` when the targets key is offline)."""
    with client_for(server, token) as client:
        release = client.upload_release(bundle.read_bytes(), hardware_id, version, counter)
    state = "published" if release.get("published", True) else "pending offline signature"
    emit(as_json, release, lambda: typer.echo(f"release {release['id']}: {release['target_path']} ({state})"))


@releases_app.command("list")
def releases_list(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Every release."""
    with client_for(server, token) as client:
        releases = client.releases()
    columns = ["id", "hardware_id", "version", "release_counter", "length", "published", "created_at"]
    emit(as_json, releases, lambda: table("Releases", columns, [[r.get(c) for c in columns] for r in releases]))


# --- ota vehicles import ---------------------------------------------------------------


def _read_vehicles(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The cars of a CSV file and the line each starts on; a structural problem exits (2 or 1)."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="FILE") from exc
    vehicles: list[dict[str, Any]] = []
    lines: list[int] = []
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in CSV_REQUIRED if c not in header]
        if missing:
            raise typer.BadParameter(f"{path}: missing column(s) {', '.join(missing)}", param_hint="FILE")
        unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
        if unknown:
            raise typer.BadParameter(f"{path}: unknown column(s) {', '.join(unknown)}", param_hint="FILE")
        reader.fieldnames = header
        line = reader.line_num + 1
        try:
            for row in reader:
                if None in row or any(row.get(c) is None for c in CSV_REQUIRED):
                    fail(f"{path}, line {line}: expected {len(header)} fields")
                values = {k: (v or "").strip() for k, v in row.items() if k is not None}
                vehicles.append(
                    {
                        "vin": values["vin"],
                        "make": values["make"] or None,
                        "model": values["model"],
                        "model_year": values["model_year"],
                        "production_date": values["production_date"],
                        "ecus": [
                            {
                                "serial": values["ecu_serial"],
                                "hardware_id": values["hardware_id"],
                                "installed_version": values["installed_version"],
                                "primary": True,
                            }
                        ],
                        "time_zone": values.get("time_zone") or None,
                    }
                )
                lines.append(line)
                line = reader.line_num + 1
        except csv.Error as exc:
            fail(f"{path}, line {reader.line_num}: {exc}")
    if not vehicles:
        raise typer.BadParameter(f"{path}: no vehicles", param_hint="FILE")
    return vehicles, lines


# Where the server names a car of the batch: "vehicles[3].vin: ..." (a field) or "vehicles[3]: ..."
# (the car); the whole reference goes, so the line's own "VIN ...: " takes its place.
_INDEX = re.compile(r"vehicles[.\[](\d+)\]?(?:\.|:\s*)?")
# Refusals that name one car of the file: invalid (422) or already registered (409).
_PER_CAR = frozenset({409, 422})


def vehicles_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV: " + ", ".join(CSV_REQUIRED))],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register the cars of a CSV file in one all-or-nothing batch (time_zone column optional).

    A bad row rejects the whole file: the error names its line and nothing is stored.
    """
    vehicles, lines = _read_vehicles(file)
    try:
        with ApiClient(server, token, transport=transport_override) as client:
            created = client.register_vehicles(vehicles)
    except ApiError as exc:
        match = _INDEX.search(exc.detail)
        if exc.status in _PER_CAR and match and int(match.group(1)) < len(lines):
            index = int(match.group(1))
            problem = _INDEX.sub("", exc.detail, count=1).strip()
            fail(
                f"{file}, line {lines[index]} (VIN {vehicles[index]['vin']}): {problem} "
                f"[{exc.method} {exc.path} -> {exc.status}]; nothing was imported"
            )
        fail(f"{exc}; nothing was imported")
    emit(as_json, {"created": created, "file": str(file)}, lambda: typer.echo(f"imported {created} vehicles"))


# --- ota recalls ---------------------------------------------------------------------


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


# --- ota campaigns -------------------------------------------------------------------


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
