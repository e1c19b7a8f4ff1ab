"""``ota vehicles import FILE``: register a fleet from a CSV file, every line or none.

A refusal names the file's line (and the car's VIN); nothing is stored unless every car is accepted.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from ota_server.cli import common
from ota_server.cli.api_client import ApiClient, ApiError
from ota_server.cli.common import (
    DEFAULT_SERVER,
    JsonOption,
    ServerOption,
    TokenOption,
    emit,
    fail,
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
        with ApiClient(server, token, transport=common.transport_override) as client:
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
