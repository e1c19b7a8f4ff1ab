"""The virtual fleet: distinct, valid vehicles for one simulator run.

Each run gets its own model name and ECU hardware id, so several runs against one
long-lived server never collide and the recall of one run targets only its own cars.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from firmware_bundles.vin import make_vin

_WMIS = ("1FT", "1HG", "5YJ", "3VW", "2T1")
_YEAR_CODES = {2022: "N", 2023: "P", 2024: "R", 2025: "S"}


@dataclass(frozen=True)
class Car:
    vin: str
    model: str
    model_year: int
    production_date: date
    ecu_serial: str
    hardware_id: str
    installed_version: str

    def registration(self) -> dict[str, Any]:
        """The body of a vehicle registration (one item of the batch call)."""
        return {
            "vin": self.vin,
            "make": "Simulated",
            "model": self.model,
            "model_year": self.model_year,
            "production_date": self.production_date.isoformat(),
            "ecus": [
                {
                    "serial": self.ecu_serial,
                    "hardware_id": self.hardware_id,
                    "installed_version": self.installed_version,
                    "primary": True,
                }
            ],
        }


@dataclass(frozen=True)
class Fleet:
    run_id: str
    model: str
    hardware_id: str
    installed_version: str
    cars: tuple[Car, ...]


def make_fleet(
    count: int, *, run_id: str | None = None, installed_version: str = "1.0.0", seed: int | None = None
) -> Fleet:
    """``count`` cars with valid, distinct VINs (one contiguous serial block of a random plant)."""
    if count < 1:
        raise ValueError("a fleet needs at least one car")
    if count > 999_999:
        raise ValueError("at most 999,999 cars per run (the VIN serial has six digits)")
    rng = random.Random(seed)
    run = run_id or secrets.token_hex(4)
    model = f"Sim-{run}"
    hardware_id = f"sim-ecu-{run}"
    wmi = rng.choice(_WMIS)
    plant = rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ")
    first = rng.randrange(0, 1_000_000 - count)
    cars = []
    for i in range(count):
        year = 2022 + i % 4
        cars.append(
            Car(
                vin=make_vin(wmi, "S" + run[:4].upper(), _YEAR_CODES[year], plant, first + i),
                model=model,
                model_year=year,
                production_date=date(year - 1, 9, 1) + timedelta(days=i % 300),
                ecu_serial=f"ECU-{run}-{i:06d}",
                hardware_id=hardware_id,
                installed_version=installed_version,
            )
        )
    return Fleet(run, model, hardware_id, installed_version, tuple(cars))
