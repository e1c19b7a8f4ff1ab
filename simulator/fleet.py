"""The virtual fleet: distinct, valid vehicles for one simulator run.

Each run gets its own model name and ECU hardware id, so several runs against one
long-lived server never collide and the recall of one run targets only its own cars.
A car may have several ECUs (``ecus``): each has its own hardware id (the run's, then
``<run's>-ecu<i>``), serial and, on the car, its own A/B slots.
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
MAX_ECUS = 32  # what one version manifest may list


@dataclass(frozen=True)
class Ecu:
    serial: str
    hardware_id: str
    installed_version: str


@dataclass(frozen=True)
class Car:
    vin: str
    model: str
    model_year: int
    production_date: date
    ecu_serial: str
    hardware_id: str
    installed_version: str
    # Every ECU, the primary (``ecu_serial``, ``hardware_id``) first; empty: that one only.
    ecus: tuple[Ecu, ...] = ()

    def all_ecus(self) -> tuple[Ecu, ...]:
        return self.ecus or (Ecu(self.ecu_serial, self.hardware_id, self.installed_version),)

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
                    "serial": ecu.serial,
                    "hardware_id": ecu.hardware_id,
                    "installed_version": ecu.installed_version,
                    "primary": i == 0,
                }
                for i, ecu in enumerate(self.all_ecus())
            ],
        }


@dataclass(frozen=True)
class Fleet:
    run_id: str
    model: str
    hardware_id: str
    installed_version: str
    cars: tuple[Car, ...]
    # Every ECU hardware id of the fleet's cars, the primary's (``hardware_id``) first.
    hardware_ids: tuple[str, ...] = ()

    def all_hardware_ids(self) -> tuple[str, ...]:
        return self.hardware_ids or (self.hardware_id,)


def ecu_hardware_id(base: str, index: int) -> str:
    """The hardware id of a car's ``index``-th ECU: the run's own for the first, distinct for the rest."""
    return base if index == 0 else f"{base}-ecu{index}"


def make_fleet(
    count: int,
    *,
    run_id: str | None = None,
    installed_version: str = "1.0.0",
    seed: int | None = None,
    ecus: int = 1,
) -> Fleet:
    """``count`` cars with valid, distinct VINs (one contiguous serial block of a random plant), ``ecus`` ECUs each."""
    if count < 1:
        raise ValueError("a fleet needs at least one car")
    if not 1 <= ecus <= MAX_ECUS:
        raise ValueError(f"a car has 1 to {MAX_ECUS} ECUs, not {ecus}")
    if count > 999_999:
        raise ValueError("at most 999,999 cars per run (the VIN serial has six digits)")
    rng = random.Random(seed)
    run = run_id or secrets.token_hex(4)
    model = f"Sim-{run}"
    hardware_id = f"sim-ecu-{run}"
    hardware_ids = tuple(ecu_hardware_id(hardware_id, k) for k in range(ecus))
    wmi = rng.choice(_WMIS)
    plant = rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ")
    first = rng.randrange(0, 1_000_000 - count)
    cars = []
    for i in range(count):
        year = 2022 + i % 4
        serial = f"ECU-{run}-{i:06d}"
        car_ecus = tuple(
            Ecu(serial if k == 0 else f"{serial}-{k}", hw, installed_version) for k, hw in enumerate(hardware_ids)
        )
        cars.append(
            Car(
                vin=make_vin(wmi, "S" + run[:4].upper(), _YEAR_CODES[year], plant, first + i),
                model=model,
                model_year=year,
                production_date=date(year - 1, 9, 1) + timedelta(days=i % 300),
                ecu_serial=serial,
                hardware_id=hardware_id,
                installed_version=installed_version,
                ecus=car_ecus if ecus > 1 else (),
            )
        )
    return Fleet(run, model, hardware_id, installed_version, tuple(cars), hardware_ids)
