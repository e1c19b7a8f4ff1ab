"""Vehicle tags and saved groups.

A tag is an operator's label on a car (lower case, :data:`ota_server.schemas.groups.TAG_RULE`).
A group is a named filter (:class:`GroupFilter`); its cars are not stored but computed when
read (:mod:`ota_server.services.group_filter`), so a group's count follows the fleet: a car
tagged, registered or reporting a new version joins or leaves it.

A recall that names a group copies the group's filter into its own population at filing
(:func:`pinned`): deleting the group or saving another one under its name later does not
change the recall, and deleting a group a recall named is therefore allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bundles.vin import normalize_vin
from ota_server.db.models import Vehicle, VehicleGroup, VehicleTag
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.schemas import Population, VehiclePage, VehiclePublic
from ota_server.schemas.groups import (
    MAX_TAGS_PER_VEHICLE,
    GroupCreate,
    GroupFilter,
    GroupPage,
    GroupPublic,
    TagBatch,
    TagBatchResult,
)
from ota_server.services import group_filter, listing
from ota_server.services import vehicles as fleet

# --- tags ---------------------------------------------------------------------------------


def _vehicle(session: Session, raw_vin: str) -> Vehicle:
    vehicle = session.scalar(select(Vehicle).where(Vehicle.vin == normalize_vin(raw_vin)))
    if vehicle is None:
        raise NotFound(f"no vehicle with VIN {raw_vin!r}")
    return vehicle


def _too_many(vin: str) -> InvalidInput:
    return InvalidInput(f"VIN {vin} carries {MAX_TAGS_PER_VEHICLE} tags already, the most a car may have")


def tag(session: Session, vin: str, name: str, actor: str, now: datetime) -> VehiclePublic:
    """Put tag ``name`` (already lower case) on the car; a tag it has already is kept as it was."""
    vehicle = _vehicle(session, vin)
    if name not in vehicle.tags:
        if len(vehicle.tags) >= MAX_TAGS_PER_VEHICLE:
            raise _too_many(vehicle.vin)
        vehicle.tag_rows.append(VehicleTag(vehicle_id=vehicle.id, tag=name, created_at=now, created_by=actor))
        session.flush()
    answer = VehiclePublic.model_validate(vehicle)
    session.commit()
    return answer


def untag(session: Session, vin: str, name: str) -> VehiclePublic:
    """Take tag ``name`` off the car; NotFound when it does not carry it."""
    vehicle = _vehicle(session, vin)
    row = next((r for r in vehicle.tag_rows if r.tag == name), None)
    if row is None:
        raise NotFound(f"VIN {vehicle.vin} has no tag {name!r}")
    vehicle.tag_rows.remove(row)
    session.flush()
    answer = VehiclePublic.model_validate(vehicle)
    session.commit()
    return answer


def _ids(session: Session, vins: Sequence[str]) -> dict[str, int]:
    """VIN -> vehicle id for every VIN given (normalised), or NotFound naming the unknown ones."""
    wanted = list(dict.fromkeys(normalize_vin(v) for v in vins))
    ids = {vin: vid for vin, vid in session.execute(select(Vehicle.vin, Vehicle.id).where(Vehicle.vin.in_(wanted)))}
    missing = [v for v in wanted if v not in ids]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotFound(f"no vehicle with VIN {missing[0]}{more}: no car was changed")
    return ids


def tag_many(session: Session, body: TagBatch, actor: str, now: datetime) -> TagBatchResult:
    """Put one tag on many cars, all or nothing (an unknown VIN or a car with too many tags refuses the batch)."""
    ids = _ids(session, body.vins)
    had = set(
        session.scalars(
            select(VehicleTag.vehicle_id).where(VehicleTag.tag == body.tag, VehicleTag.vehicle_id.in_(ids.values()))
        )
    )
    new = {vin: vid for vin, vid in ids.items() if vid not in had}
    counted = session.execute(
        select(VehicleTag.vehicle_id, func.count())
        .where(VehicleTag.vehicle_id.in_(new.values()))
        .group_by(VehicleTag.vehicle_id)
    )
    counts = {vid: n for vid, n in counted}
    full = next((vin for vin, vid in new.items() if counts.get(vid, 0) >= MAX_TAGS_PER_VEHICLE), None)
    if full is not None:
        raise _too_many(full)
    if new:
        rows = [{"vehicle_id": vid, "tag": body.tag, "created_at": now, "created_by": actor} for vid in new.values()]
        session.execute(insert(VehicleTag), rows)
    session.commit()
    return TagBatchResult(tag=body.tag, changed=len(new), unchanged=len(ids) - len(new))


def untag_many(session: Session, body: TagBatch) -> TagBatchResult:
    """Take one tag off many cars, all or nothing (an unknown VIN refuses the batch)."""
    ids = _ids(session, body.vins)
    gone = session.execute(
        delete(VehicleTag).where(VehicleTag.tag == body.tag, VehicleTag.vehicle_id.in_(ids.values()))
    )
    session.commit()
    removed = int(getattr(gone, "rowcount", 0))
    return TagBatchResult(tag=body.tag, changed=removed, unchanged=len(ids) - removed)


# --- groups -------------------------------------------------------------------------------


def _name_key(name: str) -> str:
    """What makes two names the same (case-insensitive)."""
    return name.casefold()


def _checked_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise InvalidInput("name: give the group a name")
    if name.isdigit():
        raise InvalidInput(f"name {name!r}: a name needs a letter (a number names a group by its id)")
    if len(_name_key(name)) > 64:
        raise InvalidInput(f"name {name[:40]!r}...: at most 64 characters")
    return name


def _public(session: Session, group: VehicleGroup) -> GroupPublic:
    spec = GroupFilter.model_validate(group.filter)
    return GroupPublic(
        id=group.id,
        name=group.name,
        description=group.description,
        filter=spec,
        vehicle_count=group_filter.count(session, spec),
        created_at=group.created_at,
        created_by=group.created_by,
    )


def find(session: Session, ref: str) -> VehicleGroup:
    """A group by its id or its name (any case); NotFound otherwise."""
    ref = ref.strip()
    group = (
        session.get(VehicleGroup, int(ref))
        if ref.isdigit() and int(ref) < 2**31
        else session.scalar(select(VehicleGroup).where(VehicleGroup.name_key == _name_key(ref)))
    )
    if group is None:
        raise NotFound(f"no group {ref!r} (give its name or id)")
    return group


def create(session: Session, body: GroupCreate, actor: str, now: datetime) -> GroupPublic:
    name = _checked_name(body.name)
    taken = session.scalar(select(VehicleGroup.name).where(VehicleGroup.name_key == _name_key(name)))
    if taken is not None:
        raise Conflict(f"a group named {taken!r} exists already (names are unique whatever their case)")
    spec = group_filter.normalised(body.filter)
    group = VehicleGroup(
        name=name,
        name_key=_name_key(name),
        description=body.description,
        filter=spec.model_dump(mode="json", exclude_none=True),
        created_at=now,
        created_by=actor,
    )
    session.add(group)
    try:
        session.flush()
        answer = _public(session, group)
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"a group named {name!r} exists already (saved at the same time)") from exc
    return answer


def get(session: Session, ref: str) -> GroupPublic:
    return _public(session, find(session, ref))


def remove(session: Session, ref: str) -> GroupPublic:
    """Delete a group; recalls that named it keep the copy of its filter they took at filing."""
    group = find(session, ref)
    answer = _public(session, group)
    session.delete(group)
    session.commit()
    return answer


_ID = listing.SortKey(VehicleGroup.id, lambda g: g.id, int)
LISTING = listing.Listing(
    scope="groups",
    keys={
        "id": _ID,
        "name": listing.SortKey(VehicleGroup.name_key, lambda g: g.name_key, str),  # whatever the case
        "created_at": listing.SortKey(VehicleGroup.created_at, lambda g: g.created_at, datetime),
    },
    tie=_ID,
    default="name",
)


def page(session: Session, sort: str | None, cursor: str | None, limit: int) -> GroupPage:
    """Groups in the asked order (by name, any case, by default), each with its count now."""
    rows, next_cursor = listing.page(session, select(VehicleGroup), LISTING, sort, cursor, limit)
    return GroupPage(items=[_public(session, g) for g in rows], next_cursor=next_cursor)


def vehicles(session: Session, ref: str, sort: str | None, cursor: str | None, limit: int) -> VehiclePage:
    """The group's cars now, a page at a time, sorted as the fleet list is (VIN by default)."""
    group = find(session, ref)
    query, keep = group_filter.selection(session, GroupFilter.model_validate(group.filter))
    cars, next_cursor = listing.page(session, query, fleet.LISTING, sort, cursor, limit, keep=keep)
    return VehiclePage(items=[VehiclePublic.model_validate(v) for v in cars], next_cursor=next_cursor)


def pinned(session: Session, population: Population) -> Population:
    """``population`` with the group it names copied in (name, id and filter as they are now).

    The copy is what the recall goes by from then on: the group may change or go later.
    """
    if population.group_id is not None or population.group_filter is not None:
        raise InvalidInput(
            "population.group_id and population.group_filter are set by the server: name the group in population.group"
        )
    if population.group is None:
        return population
    try:
        group = find(session, population.group)
    except NotFound as exc:
        raise InvalidInput(f"population.group: {exc.message}") from exc
    return population.model_copy(
        update={"group": group.name, "group_id": group.id, "group_filter": GroupFilter.model_validate(group.filter)}
    )
