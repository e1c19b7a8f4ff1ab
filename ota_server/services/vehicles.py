"""Fleet registration and per-vehicle views (status, agent bootstrap config).

Registration is all-or-nothing: every car of a batch is validated before any
row is written, and the whole batch goes in with two bulk INSERTs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Select, exists, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import normalize_vin, validate_vin
from firmware_bundles.window import parse_hold
from ota_server.db.models import (
    Campaign,
    CampaignEvent,
    CampaignVehicle,
    Discrepancy,
    Ecu,
    Recall,
    Vehicle,
    VehicleTag,
)
from ota_server.db.statistics import analyze_loaded
from ota_server.domain.states import StateWord, VinState, expand_states
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.schemas import (
    AgentConfig,
    AgentEcu,
    EcuPublic,
    HistoryEntry,
    VehicleCampaignStatus,
    VehicleCreate,
    VehicleDecommission,
    VehicleDecommissioned,
    VehiclePage,
    VehiclePublic,
    VehicleStatus,
    VehicleUpdate,
)
from ota_server.services import campaign_control, listing
from ota_server.services import population as populations
from ota_server.services.campaigns import Outbound
from ota_server.services.listing import LATEST, Listing, SortKey
from ota_server.signing.director import Director

_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _checked_vin(vehicle: VehicleCreate) -> str:
    """The normalised VIN, after checking the car's own rules (VIN, ECU serials)."""
    try:
        vin = validate_vin(vehicle.vin)
    except InvalidVin as exc:
        raise InvalidInput(f"invalid VIN {vehicle.vin!r}: {exc}") from exc
    serials = [ecu.serial for ecu in vehicle.ecus]
    if len(set(serials)) != len(serials):
        raise InvalidInput(f"VIN {vin}: ECU serials must be unique, got {serials}")
    return vin


def _existing(session: Session, vins: Sequence[str]) -> list[str]:
    found: list[str] = []
    for chunk in _chunks(vins):
        found.extend(session.scalars(select(Vehicle.vin).where(Vehicle.vin.in_(chunk))))
    return found


def register(session: Session, vehicles: Sequence[VehicleCreate], now: datetime) -> int:
    """Store ``vehicles`` or nothing; raise InvalidInput naming the first bad car, Conflict on duplicates.

    Messages name the car by its index in the request (``vehicles[3]: ...``), so a caller that
    sent a file can point at its line.
    """
    with _committed(session):
        created = _stage(session, vehicles, now, numbered=True)
    analyze_loaded(session, created, "vehicles", "ecus")  # a fleet import: the planner sees its size
    return created


def register_one(session: Session, vehicle: VehicleCreate, now: datetime) -> VehiclePublic:
    """Store one car and answer with what was stored, read before the commit (all or nothing)."""
    with _committed(session):
        _stage(session, [vehicle], now, numbered=False)
        return get(session, vehicle.vin)


@contextmanager
def _committed(session: Session) -> Iterator[None]:
    """Commit once the block has built its answer; a concurrent registration of a VIN is a Conflict."""
    try:
        yield
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict("VIN already registered (concurrent registration)") from exc


def _stage(session: Session, vehicles: Sequence[VehicleCreate], now: datetime, *, numbered: bool) -> int:
    """Insert ``vehicles`` (not committed) after checking every one; ``numbered``: name cars by index."""
    vins: list[str] = []
    for index, vehicle in enumerate(vehicles):
        try:
            vins.append(_checked_vin(vehicle))
        except InvalidInput as exc:
            prefix = f"vehicles[{index}]: " if numbered else ""
            raise InvalidInput(prefix + exc.message) from exc
    seen: set[str] = set()
    for index, vin in enumerate(vins):
        if vin in seen:
            raise InvalidInput(f"vehicles[{index}]: VIN {vin} appears twice in the request")
        seen.add(vin)
    taken = set(_existing(session, vins))
    if taken:
        index, vin = next((i, v) for i, v in enumerate(vins) if v in taken)
        prefix = f"vehicles[{index}]: " if numbered else ""
        more = f" (and {len(taken) - 1} more of the request)" if len(taken) > 1 else ""
        raise Conflict(f"{prefix}VIN {vin} is already registered{more}")
    rows = [
        {
            "vin": vin,
            "make": v.make,
            "model": v.model,
            "model_year": v.model_year,
            "production_date": v.production_date,
            "time_zone": v.time_zone,
            "online": False,
            "last_seen": None,
            "created_at": now,
        }
        for vin, v in zip(vins, vehicles, strict=True)
    ]
    ids = dict(session.execute(insert(Vehicle).returning(Vehicle.vin, Vehicle.id), rows).all())
    ecu_rows = [
        {"vehicle_id": ids[vin], **ecu.model_dump()} for vin, v in zip(vins, vehicles, strict=True) for ecu in v.ecus
    ]
    session.execute(insert(Ecu), ecu_rows)
    return len(rows)


def _vehicle(session: Session, raw_vin: str) -> Vehicle:
    vehicle = session.scalar(select(Vehicle).where(Vehicle.vin == normalize_vin(raw_vin)))
    if vehicle is None:
        raise NotFound(f"no vehicle with VIN {raw_vin!r}")
    return vehicle


def get(session: Session, vin: str) -> VehiclePublic:
    return VehiclePublic.model_validate(_vehicle(session, vin))


def status(session: Session, vin: str) -> VehicleStatus:
    """Everything known about one car: presence, ECUs and every campaign with its history."""
    vehicle = _vehicle(session, vin)
    rows = session.execute(
        select(CampaignVehicle, Recall.campaign_number)
        .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
        .join(Recall, Recall.id == Campaign.recall_id)
        .where(CampaignVehicle.vin == vehicle.vin)
        .order_by(CampaignVehicle.campaign_id)
    ).all()
    events = session.scalars(
        select(CampaignEvent).where(CampaignEvent.vin == vehicle.vin).order_by(CampaignEvent.id)
    ).all()
    campaigns = []
    for cv, number in rows:
        history = [
            HistoryEntry(
                state=e.state,
                reason=e.reason,
                detail=e.detail,
                attempt=e.attempt,
                received_at=e.received_at,
                deferrals=e.deferrals,
                source=e.source,
            )
            for e in events
            if e.campaign_id == cv.campaign_id
        ]
        held = parse_hold(cv.detail) if cv.state == VinState.DEFERRED.value else None
        campaigns.append(
            VehicleCampaignStatus(
                campaign_id=cv.campaign_id,
                recall_number=number,
                state=cv.state,
                reason=cv.reason,
                detail=cv.detail,
                updated_at=cv.updated_at,
                history=history,
                next_try_at=held.next_try_at if held else None,
                window=held.window if held else None,
            )
        )
    return VehicleStatus(
        vin=vehicle.vin,
        online=vehicle.online,
        last_seen=vehicle.last_seen,
        ecus=[EcuPublic.model_validate(e) for e in vehicle.ecus],
        campaigns=campaigns,
    )


def public_mqtt_url(mqtt_url: str) -> str:
    """The broker URL without the server's own credentials, fit to hand to a car."""
    parts = urlsplit(mqtt_url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def agent_config(
    session: Session, vin: str, *, mqtt_url: str, repo_url: str, image_root: bytes, director_root: bytes
) -> AgentConfig:
    vehicle = _vehicle(session, vin)
    return AgentConfig(
        vin=vehicle.vin,
        ecus=[
            AgentEcu(serial=e.serial, hardware_id=e.hardware_id, installed_version=e.installed_version)
            for e in vehicle.ecus
        ],
        mqtt_url=public_mqtt_url(mqtt_url),
        repo_url=repo_url,
        image_root=image_root.decode(),
        director_root=director_root.decode(),
    )


# --- the fleet, managed: list, change, decommission -------------------------------------

_VIN = listing.column(Vehicle.vin, str)
# The fleet's sort keys; VIN is the default and the tie breaker (unique). A car never seen sorts
# after every seen one (ascending), so a keyset over last_seen stays total.
LISTING = Listing(
    scope="vehicles",
    keys={
        "vin": _VIN,
        "model": listing.column(Vehicle.model, str),
        "model_year": listing.column(Vehicle.model_year, int),
        "created_at": listing.column(Vehicle.created_at, datetime),
        "last_seen": SortKey(func.coalesce(Vehicle.last_seen, LATEST), lambda v: v.last_seen or LATEST, datetime),
    },
    tie=_VIN,
    default="vin",
)


@dataclass(frozen=True)
class FleetFilter:
    """What ``GET /api/v1/vehicles`` narrows the fleet by; None (or False) leaves a filter out.

    ``installed_version`` is the ECU's installed version (the car's reported one once it has
    sent a manifest); with ``hardware_id`` both must hold for the same ECU. ``recall`` names a
    recall by id or campaign number: its campaign's cars once launched, its population before.
    ``state`` is the car's state in ``campaign`` (or the recall's campaign, or any campaign).
    """

    model: str | None = None
    model_year: int | None = None
    hardware_id: str | None = None
    installed_version: str | None = None
    recall: str | None = None
    campaign: int | None = None
    state: StateWord | None = None  # a group word (errors) stands for each of its states
    not_seen_since: datetime | None = None
    decommissioned: bool | None = None
    discrepancy: str | None = None  # "any" or a kind: cars with such a finding on record
    tag: str | None = None  # cars carrying this tag (lower case)


def _recall(session: Session, ref: str) -> Recall:
    ref = ref.strip()
    recall = (
        session.get(Recall, int(ref))
        if ref.isdigit() and int(ref) < 2**31
        else session.scalar(select(Recall).where(Recall.campaign_number == ref.upper()))
    )
    if recall is None:
        raise NotFound(f"no recall {ref!r} (give its id or campaign number)")
    return recall


def _campaign_ids(session: Session, spec: FleetFilter) -> list[int] | None:
    """The campaigns the recall and campaign filters point at (None: no such filter)."""
    ids: list[int] | None = None
    if spec.recall is not None:
        recall = _recall(session, spec.recall)
        ids = list(session.scalars(select(Campaign.id).where(Campaign.recall_id == recall.id)))
    if spec.campaign is not None:
        if session.get(Campaign, spec.campaign) is None:
            raise NotFound(f"no campaign {spec.campaign}")
        ids = [spec.campaign] if ids is None or spec.campaign in ids else []
    return ids


def _preview(session: Session, ref: str) -> set[str] | None:
    """An unlaunched recall's population now (the cars it would take); None once it is launched."""
    recall = _recall(session, ref)
    if session.scalar(select(Campaign.id).where(Campaign.recall_id == recall.id).limit(1)) is not None:
        return None
    return {m.vin for m in populations.of_recall(session, recall)}


def _filtered(session: Session, spec: FleetFilter) -> tuple[Select[Vehicle], Callable[[str], bool] | None]:
    """The SQL for every filter SQL can judge, and a VIN test for the one it cannot (a recall's preview)."""
    query = select(Vehicle)
    if spec.model is not None:
        query = query.where(Vehicle.model == spec.model)
    if spec.model_year is not None:
        query = query.where(Vehicle.model_year == spec.model_year)
    ecu = [Ecu.vehicle_id == Vehicle.id]
    if spec.hardware_id is not None:
        ecu.append(Ecu.hardware_id == spec.hardware_id)
    if spec.installed_version is not None:
        ecu.append(Ecu.installed_version == spec.installed_version)
    if len(ecu) > 1:
        query = query.where(exists().where(*ecu))
    if spec.not_seen_since is not None:
        since = spec.not_seen_since if spec.not_seen_since.tzinfo else spec.not_seen_since.replace(tzinfo=UTC)
        query = query.where(or_(Vehicle.last_seen.is_(None), Vehicle.last_seen < since))
    if spec.decommissioned is not None:
        gone = Vehicle.decommissioned_at.is_not(None)
        query = query.where(gone if spec.decommissioned else ~gone)
    if spec.discrepancy is not None:
        found = [Discrepancy.vin == Vehicle.vin]
        if spec.discrepancy != "any":
            found.append(Discrepancy.kind == spec.discrepancy)
        query = query.where(exists().where(*found))
    if spec.tag is not None:
        query = query.where(exists().where(VehicleTag.vehicle_id == Vehicle.id, VehicleTag.tag == spec.tag))
    keep: Callable[[str], bool] | None = None
    preview = _preview(session, spec.recall) if spec.recall is not None and spec.campaign is None else None
    if preview is not None:
        keep = preview.__contains__
        if spec.state is not None:  # a car of a recall not launched has no state in it
            keep = frozenset().__contains__
    else:
        ids = _campaign_ids(session, spec)
        if ids is not None or spec.state is not None:
            car = [CampaignVehicle.vin == Vehicle.vin]
            if ids is not None:
                car.append(CampaignVehicle.campaign_id.in_(ids))
            if spec.state is not None:
                car.append(CampaignVehicle.state.in_(sorted(s.value for s in expand_states([spec.state]))))
            query = query.where(exists().where(*car))
    return query, keep


def page(session: Session, spec: FleetFilter, sort: str | None, cursor: str | None, limit: int) -> VehiclePage:
    """Up to ``limit`` cars after ``cursor`` in the asked order (VIN by default), and the next page's cursor.

    Keyset paging (the one list contract): a car registered or changed between two pages is
    neither seen twice nor skipped among those already passed.
    """
    query, keep = _filtered(session, spec)
    test = None if keep is None else (lambda car: keep(car.vin))
    found, next_cursor = listing.page(session, query, LISTING, sort, cursor, limit, keep=test)
    return VehiclePage(items=[VehiclePublic.model_validate(v) for v in found], next_cursor=next_cursor)


# Fields of an update that a recall's population filters on.
POPULATION_FIELDS = frozenset({"model_year"})


def update(session: Session, vin: str, body: VehicleUpdate) -> VehiclePublic:
    """Change what may change (the schema refused the rest); answered from the open transaction, then committed.

    A changed model year may bring the car into a dynamic recall's population: the caller asks
    for a tick (:data:`POPULATION_FIELDS`), and the campaign takes it as a late joiner.
    """
    if "model_year" in body.model_fields_set and body.model_year is None:
        raise InvalidInput("model_year cannot be cleared: give the corrected year")
    vehicle = _vehicle(session, vin)
    for name in body.model_fields_set:
        setattr(vehicle, name, getattr(body, name))
    answer = VehiclePublic.model_validate(vehicle)
    session.commit()
    return answer


def decommission(
    session: Session, director: Director, vin: str, body: VehicleDecommission, actor: str, now: datetime
) -> tuple[VehicleDecommissioned, list[Outbound]]:
    """Take a car out of the fleet: out of every future population, unreachable in the open campaigns.

    All or nothing: a car installing somewhere is refused whole (Conflict), and so is a second
    decommissioning. Returns the answer and the withdrawals the caller sends after the commit.
    """
    vehicle = _vehicle(session, vin)
    if vehicle.decommissioned_at is not None:
        when = vehicle.decommissioned_at.date().isoformat()
        raise Conflict(f"VIN {vehicle.vin} was decommissioned on {when} ({vehicle.decommission_reason})")
    removed_from, messages = campaign_control.remove_vehicle(
        session, director, vehicle.vin, body.reason.value, body.detail, actor, now
    )
    vehicle.decommissioned_at, vehicle.decommission_reason = now, body.reason.value
    vehicle.decommission_detail = body.detail
    answer = VehicleDecommissioned(vehicle=VehiclePublic.model_validate(vehicle), removed_from=removed_from)
    session.commit()
    return answer, messages
