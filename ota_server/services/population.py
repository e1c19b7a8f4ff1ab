"""Resolving a recall's population: which cars, and which of their ECUs, the fix is for.

Cheap filters run in SQL; installed-version bounds need PEP 440 ordering
("1.10" > "1.9"), so they run in Python on the rows SQL already narrowed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from packaging.version import Version
from sqlalchemy import ColumnElement, Row, Select, or_, select
from sqlalchemy.orm import Session

from ota_server.db.models import Ecu, Recall, RecallRelease, Release, Vehicle
from ota_server.errors import InvalidInput
from ota_server.schemas import Population
from ota_server.services import group_filter

# VINs per query: large lists keep a launch's ticks linear (a fresh fleet has no planner statistics
# yet, and each query of a chunk scans the candidates) while staying far under parameter limits.
_VIN_CHUNK = 5000


class Reported(NamedTuple):
    """What a car's manifests say one of its ECUs runs."""

    installed_version: str | None
    installed_sha256: str | None


@dataclass(frozen=True)
class Member:
    """One affected car, the serials of its ECUs to update (primary first), the release for each and,
    for each, what the car's manifests say it runs (None: no manifest has named it yet). Read in the
    same rows as the population, so a launch need not read every car's ECUs again to find the cars
    already fixed (~0.2 s of a 30,000-car approval, issue 19)."""

    vin: str
    ecu_serials: tuple[str, ...]
    release_ids: tuple[int, ...]
    reported: tuple[Reported | None, ...]

    def assignments(self) -> dict[str, int]:
        """ECU serial -> the release it installs."""
        return dict(zip(self.ecu_serials, self.release_ids, strict=True))


def normalised(population: Population) -> Population:
    """Check the filters make sense and return them in canonical form (upper-case VINs)."""
    if population.models is not None and not population.models:
        raise InvalidInput("population.models: give at least one model or leave it out")
    vin_range = group_filter.checked_ranges(
        "population",
        population.model_years,
        population.production_dates,
        population.installed_versions,
        population.vin_range,
    )
    return population.model_copy(update={"vin_range": vin_range})


def hardware_confirmed() -> ColumnElement[bool]:
    """An ECU whose manifest reports another hardware id than registered is assigned nothing
    (the registration is wrong or the ECU was swapped): the Director goes by the car's word."""
    return or_(Ecu.reported_hardware_id.is_(None), Ecu.reported_hardware_id == Ecu.hardware_id)


def _query(population: Population, hardware_id: str) -> Select[str, str, str, str | None, bool]:
    query = (
        select(Vehicle.vin, Ecu.serial, Ecu.installed_version, Ecu.installed_sha256, Ecu.reported_at.is_not(None))
        .join(Ecu, Ecu.vehicle_id == Vehicle.id)
        .where(Ecu.hardware_id == hardware_id, Vehicle.decommissioned_at.is_(None))  # left the fleet: never again
        .where(hardware_confirmed())
        .order_by(Vehicle.id, Ecu.primary.desc(), Ecu.id)
    )
    if population.models:
        query = query.where(Vehicle.model.in_(population.models))
    if population.model_years and population.model_years.min is not None:
        query = query.where(Vehicle.model_year >= population.model_years.min)
    if population.model_years and population.model_years.max is not None:
        query = query.where(Vehicle.model_year <= population.model_years.max)
    if population.vin_range:
        query = query.where(group_filter.in_vin_range(population.vin_range))
    if population.production_dates and population.production_dates.start:
        query = query.where(Vehicle.production_date >= population.production_dates.start)
    if population.production_dates and population.production_dates.end:
        query = query.where(Vehicle.production_date <= population.production_dates.end)
    return query


def releases_of(session: Session, recall: Recall) -> list[Release]:
    """The releases ``recall`` installs, the primary first (as filed)."""
    rows = session.scalars(
        select(Release)
        .join(RecallRelease, RecallRelease.release_id == Release.id)
        .where(RecallRelease.recall_id == recall.id)
        .order_by(RecallRelease.position, RecallRelease.hardware_id)
    ).all()
    return list(rows)


def of_recall(session: Session, recall: Recall, vins: Sequence[str] | None = None) -> list[Member]:
    """The cars ``recall`` affects now, each with its affected ECUs and their releases."""
    return resolve_all(session, Population.stored(recall.population), releases_of(session, recall), vins)


def resolve(
    session: Session, population: Population, release: Release, vins: Sequence[str] | None = None
) -> list[Member]:
    """The cars matching every filter, each with the matching ECUs of the target hardware.

    ``vins`` narrows the answer to those cars (the scheduler signs a wave's cars only).
    """
    return resolve_all(session, population, [release], vins)


def resolve_all(
    session: Session, population: Population, releases: Sequence[Release], vins: Sequence[str] | None = None
) -> list[Member]:
    """:func:`resolve` for a recall of several releases (one per hardware id).

    A car is affected when at least one of its ECUs matches one release's hardware id (and
    every other filter); it gets each such ECU with that ECU's release, in one member.
    ``population.hardware_id`` replaces the hardware id of a one-release recall only.
    """
    bounds = population.installed_versions
    low = Version(bounds.min) if bounds and bounds.min else None
    high = Version(bounds.max) if bounds and bounds.max else None
    # A group the recall named: its filter as copied at filing, one more condition on the car.
    group = None if population.group_filter is None else group_filter.members(session, population.group_filter, vins)
    grouped: dict[str, list[tuple[str, int, Reported | None]]] = {}
    for release in releases:
        hardware_id = (population.hardware_id if len(releases) == 1 else None) or release.hardware_id
        for vin, serial, installed, sha256, reported in _rows(session, population, hardware_id, vins):
            if (group is None or vin in group) and group_filter.version_matches(installed, low, high):
                said = Reported(installed, sha256) if reported else None
                grouped.setdefault(vin, []).append((serial, release.id, said))
    return [
        Member(vin, tuple(s for s, _, _ in ecus), tuple(r for _, r, _ in ecus), tuple(w for _, _, w in ecus))
        for vin, ecus in grouped.items()
    ]


def _rows(
    session: Session, population: Population, hardware_id: str, vins: Sequence[str] | None
) -> Iterator[Row[str, str, str, str | None, bool]]:
    queries = (
        [_query(population, hardware_id)]
        if vins is None
        else [
            _query(population, hardware_id).where(Vehicle.vin.in_(vins[i : i + _VIN_CHUNK]))
            for i in range(0, len(vins), _VIN_CHUNK)
        ]
    )
    for query in queries:
        yield from session.execute(query)
