"""Fleet registration and per-vehicle views (status, agent bootstrap config).

Registration is all-or-nothing: every car of a batch is validated before any
row is written, and the whole batch goes in with two bulk INSERTs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import validate_vin
from ota_server.db.models import Campaign, CampaignEvent, CampaignVehicle, Ecu, Recall, Vehicle
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.schemas import (
    AgentConfig,
    AgentEcu,
    EcuPublic,
    HistoryEntry,
    VehicleCampaignStatus,
    VehicleCreate,
    VehiclePublic,
    VehicleStatus,
)

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
        return _stage(session, vehicles, now, numbered=True)


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
    vehicle = session.scalar(select(Vehicle).where(Vehicle.vin == raw_vin.strip().upper()))
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
        campaigns.append(
            VehicleCampaignStatus(
                campaign_id=cv.campaign_id,
                recall_number=number,
                state=cv.state,
                reason=cv.reason,
                detail=cv.detail,
                updated_at=cv.updated_at,
                history=history,
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
