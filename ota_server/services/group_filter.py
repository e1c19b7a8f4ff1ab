"""Which cars a saved group's filter matches now (its members are never stored: counted when read).

SQL judges the models, years, VIN and date ranges and the tags. Version bounds need PEP 440
ordering ("1.10" > "1.9"): the fleet's distinct versions (few) are judged in Python and the
ones in range go back to SQL as a list, so a count is one COUNT query; with more than
:data:`_VERSIONS_IN_SQL` of them, each candidate ECU's version is judged in Python instead.
Used by the groups themselves and by a recall population that names a group (with the copy
of the filter the recall took at filing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from packaging.version import InvalidVersion, Version
from sqlalchemy import ColumnElement, Select, SQLColumnExpression, String, and_, exists, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from firmware_bundles.vin import normalize_vin, vin_order
from ota_server.db.models import Ecu, Vehicle, VehicleTag
from ota_server.errors import InvalidInput
from ota_server.schemas.groups import GroupFilter, GroupVersions
from ota_server.schemas.ranges import DateRange, VersionRange, VinRange, YearRange

_VIN_CHUNK = 5000
_VERSIONS_IN_SQL = 1000  # distinct versions in range sent as one IN list; more: judged row by row


def version(raw: str, what: str) -> Version:
    """``raw`` as a PEP 440 version, or InvalidInput naming ``what``."""
    try:
        return Version(raw)
    except InvalidVersion as exc:
        raise InvalidInput(f"{what}: {raw!r} is not a valid version") from exc


def checked_ranges(
    where: str,
    years: YearRange | None,
    dates: DateRange | None,
    versions: VersionRange | None,
    vin_range: VinRange | None,
) -> VinRange | None:
    """Check each range is in order (and its versions parse); return the VIN range in canonical form."""
    if years and years.min is not None and years.max is not None and years.min > years.max:
        raise InvalidInput(f"{where}.model_years: min {years.min} is after max {years.max}")
    if dates and dates.start and dates.end and dates.start > dates.end:
        raise InvalidInput(f"{where}.production_dates: start {dates.start} is after end {dates.end}")
    if versions:
        low = version(versions.min, f"{where}.installed_versions.min") if versions.min else None
        high = version(versions.max, f"{where}.installed_versions.max") if versions.max else None
        if low and high and low > high:
            raise InvalidInput(f"{where}.installed_versions: min {low} is above max {high}")
    if vin_range:
        first, last = normalize_vin(vin_range.first), normalize_vin(vin_range.last)
        if vin_order(first) > vin_order(last):
            raise InvalidInput(
                f"{where}.vin_range: first {first} sorts after last {last} in VIN order "
                "(positions 1-8 then 10-17; position 9, the check digit, is not compared)"
            )
        vin_range = vin_range.model_copy(update={"first": first, "last": last})
    return vin_range


def vin_order_sql(vin: SQLColumnExpression[str]) -> ColumnElement[str]:
    """:func:`firmware_bundles.vin.vin_order` in SQL (substr and || on SQLite and PostgreSQL alike)."""
    return func.substr(vin, 1, 8, type_=String).concat(func.substr(vin, 10, 8, type_=String))


def in_vin_range(vin_range: VinRange) -> ColumnElement[bool]:
    """The cars whose VIN is within the range in VIN order (:func:`firmware_bundles.vin.vin_order`).

    The plain comparisons on positions 1-8 keep the VIN index usable; the order key decides.
    """
    first, last = vin_order(vin_range.first), vin_order(vin_range.last)
    return and_(
        Vehicle.vin >= first[:8],
        Vehicle.vin <= last[:8] + "Z" * 9,  # VIN characters are 0-9 and A-Z: nothing sorts after Z
        vin_order_sql(Vehicle.vin).between(first, last),
    )


def version_matches(raw: str | None, low: Version | None, high: Version | None) -> bool:
    """``raw`` within the inclusive bounds (no bounds: any version); an unreadable version never matches."""
    if raw is None:
        return False  # nothing on record (no declared version): cannot tell, so not a member
    if low is None and high is None:
        return True
    try:
        parsed = Version(raw)
    except InvalidVersion:
        return False  # cannot tell where it sits: leave it out rather than guess
    return (low is None or parsed >= low) and (high is None or parsed <= high)


def normalised(spec: GroupFilter, where: str = "filter") -> GroupFilter:
    """Check the filter makes sense (ranges in order, versions parse) and return it canonical."""
    vin_range = checked_ranges(where, spec.model_years, spec.production_dates, spec.installed_versions, spec.vin_range)
    tags_all = sorted(set(spec.tags_all)) if spec.tags_all else None
    tags_any = sorted(set(spec.tags_any)) if spec.tags_any else None
    return spec.model_copy(update={"vin_range": vin_range, "tags_all": tags_all, "tags_any": tags_any})


def _tagged(*tags: str) -> ColumnElement[bool]:
    return exists().where(VehicleTag.vehicle_id == Vehicle.id, VehicleTag.tag.in_(tags))


def _vehicle_conditions(spec: GroupFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Vehicle.decommissioned_at.is_(None)]
    if spec.models:
        conditions.append(Vehicle.model.in_(spec.models))
    if spec.model_years and spec.model_years.min is not None:
        conditions.append(Vehicle.model_year >= spec.model_years.min)
    if spec.model_years and spec.model_years.max is not None:
        conditions.append(Vehicle.model_year <= spec.model_years.max)
    if spec.vin_range:
        conditions.append(in_vin_range(spec.vin_range))
    if spec.production_dates and spec.production_dates.start:
        conditions.append(Vehicle.production_date >= spec.production_dates.start)
    if spec.production_dates and spec.production_dates.end:
        conditions.append(Vehicle.production_date <= spec.production_dates.end)
    conditions.extend(_tagged(tag) for tag in spec.tags_all or [])
    if spec.tags_any:
        conditions.append(_tagged(*spec.tags_any))
    return conditions


def _ecu_conditions(versions: GroupVersions) -> tuple[InstrumentedAttribute[str | None], list[ColumnElement[bool]]]:
    """The version column the bounds judge and which ECUs count."""
    column: InstrumentedAttribute[str | None] = (
        Ecu.declared_version if versions.basis == "declared" else Ecu.installed_version
    )
    conditions: list[ColumnElement[bool]] = []
    if versions.hardware_id is not None:
        conditions.append(Ecu.hardware_id == versions.hardware_id)
    if versions.basis == "reported":
        conditions.append(Ecu.reported_at.is_not(None))
    return column, conditions


def _conditions(session: Session, spec: GroupFilter) -> list[ColumnElement[bool]] | None:
    """Every filter as SQL on ``vehicles``: version bounds become the list of the fleet's distinct versions
    within them (few: releases and factory versions). None when that list is too long to send."""
    conditions = _vehicle_conditions(spec)
    versions = spec.installed_versions
    if versions is None:
        return conditions
    column, ecu = _ecu_conditions(versions)
    low = Version(versions.min) if versions.min else None
    high = Version(versions.max) if versions.max else None
    seen = session.scalars(select(column).distinct().where(*ecu))
    within = [raw for raw in seen if version_matches(raw, low, high)]
    if len(within) > _VERSIONS_IN_SQL:
        return None
    return [*conditions, exists().where(Ecu.vehicle_id == Vehicle.id, *ecu, column.in_(within))]


def _judged_in_python(
    session: Session, spec: GroupFilter, versions: GroupVersions, narrow: Sequence[ColumnElement[bool]]
) -> Iterator[str]:
    """The VINs of the cars with an ECU in range, its version judged here (a fleet of very many versions)."""
    column, ecu = _ecu_conditions(versions)
    low = Version(versions.min) if versions.min else None
    high = Version(versions.max) if versions.max else None
    query = select(Vehicle.vin, column).join(Ecu, Ecu.vehicle_id == Vehicle.id).where(*_vehicle_conditions(spec))
    for vin, raw in session.execute(query.where(*ecu, *narrow)):
        if version_matches(raw, low, high):
            yield vin


def members(session: Session, spec: GroupFilter, vins: Sequence[str] | None = None) -> set[str]:
    """The VINs the filter matches now; ``vins`` narrows the answer to those cars."""
    chunks = [None] if vins is None else [vins[i : i + _VIN_CHUNK] for i in range(0, len(vins), _VIN_CHUNK)]
    conditions = _conditions(session, spec)
    found: set[str] = set()
    for chunk in chunks:
        narrow = [] if chunk is None else [Vehicle.vin.in_(chunk)]
        if conditions is not None:
            found.update(session.scalars(select(Vehicle.vin).where(*conditions, *narrow)))
        elif spec.installed_versions is not None:
            found.update(_judged_in_python(session, spec, spec.installed_versions, narrow))
    return found


def selection(session: Session, spec: GroupFilter) -> tuple[Select[Vehicle], Callable[[Vehicle], bool] | None]:
    """The group's cars as a query, and a test for the cars SQL cannot judge (None: the query is exact)."""
    conditions = _conditions(session, spec)
    if conditions is not None:
        return select(Vehicle).where(*conditions), None
    within = members(session, spec)
    return select(Vehicle).where(*_vehicle_conditions(spec)), lambda car: car.vin in within


def count(session: Session, spec: GroupFilter) -> int:
    """How many cars the filter matches now (counted by the database when it can)."""
    conditions = _conditions(session, spec)
    if conditions is None:
        return len(members(session, spec))
    return session.scalar(select(func.count()).select_from(Vehicle).where(*conditions)) or 0
