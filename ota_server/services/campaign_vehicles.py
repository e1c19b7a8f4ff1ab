"""Every car of a campaign, filtered and paged: state, wave (from 1), reason in plain words, next try, ECU versions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, case, exists, func, or_, select
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, CampaignEcu, CampaignVehicle, Ecu, Vehicle
from ota_server.domain.reasons import reason_code, reason_text
from ota_server.domain.states import StateWord, VinState, expand_states
from ota_server.domain.waves import wave_index, wave_number
from ota_server.errors import NotFound
from ota_server.schemas.listing import CampaignEcuVersion, CampaignVehiclePage, CampaignVehicleRow
from ota_server.services import listing
from ota_server.services.listing import LATEST, Listing, SortKey

# A deferred car looks again by itself, every ``retry_interval`` seconds of its agent's config
# (vehicle_agent.config.VehicleOptions, 300 by default, jittered); the server is not told its
# config, so the row says this is an estimate (``next_try_basis``).
AGENT_RECHECK = timedelta(seconds=300)

CV = CampaignVehicle
_DEFERRED = VinState.DEFERRED.value


def _next_try_key(cv: CampaignVehicle) -> datetime:
    if cv.state == _DEFERRED:
        return cv.updated_at
    return cv.next_retry_at or LATEST


_VIN = SortKey(CV.vin, lambda cv: cv.vin, str)
LISTING = Listing(
    scope="campaign-vehicles",
    keys={
        "vin": _VIN,
        "state": SortKey(CV.state, lambda cv: cv.state, str),
        "updated_at": SortKey(CV.updated_at, lambda cv: cv.updated_at, datetime),
        # deferred cars by their last deferral (their next look is a fixed interval after it)
        "next_try_at": SortKey(
            case((CV.state == _DEFERRED, CV.updated_at), else_=func.coalesce(CV.next_retry_at, LATEST)),
            _next_try_key,
            datetime,
        ),
    },
    tie=_VIN,
    default="vin",
)


@dataclass(frozen=True)
class CarFilter:
    """Every filter given must hold; ``states`` is any of them (a group word: each of its states),
    ``wave`` counts from 1."""

    states: Sequence[StateWord] = ()
    reason: str | None = None
    wave: int | None = None
    ecu: str | None = None
    vin_prefix: str | None = None


def _query(session: Session, campaign_id: int, spec: CarFilter) -> Select[CampaignVehicle]:
    if session.get(Campaign, campaign_id) is None:
        raise NotFound(f"no campaign {campaign_id}")
    query = select(CV).where(CV.campaign_id == campaign_id)
    if spec.states:
        query = query.where(CV.state.in_(sorted(s.value for s in expand_states(spec.states))))
    if spec.reason is not None:
        # a deferred car's code is the first word of its detail (``<code>: <text>``, vehicle_agent.gate)
        deferred_with = (
            (CV.state == _DEFERRED) & CV.reason.is_(None) & CV.detail.startswith(f"{spec.reason}:", autoescape=True)
        )
        query = query.where(or_(CV.reason == spec.reason, deferred_with))
    if spec.wave is not None:
        query = query.where(CV.wave == wave_index(spec.wave))
    if spec.ecu is not None:
        query = query.where(
            exists().where(
                CampaignEcu.campaign_id == CV.campaign_id,
                CampaignEcu.vin == CV.vin,
                or_(CampaignEcu.ecu_serial == spec.ecu, CampaignEcu.hardware_id == spec.ecu),
            )
        )
    if spec.vin_prefix:
        query = query.where(CV.vin.startswith(spec.vin_prefix.strip().upper(), autoescape=True))
    return query


def _rows(session: Session, campaign_id: int, cars: Sequence[CampaignVehicle]) -> list[CampaignVehicleRow]:
    """The page's cars with their registration and each affected ECU's version (two queries per page)."""
    vins = [cv.vin for cv in cars]
    vehicles = {v.vin: v for v in session.scalars(select(Vehicle).where(Vehicle.vin.in_(vins)))}
    ecus: dict[str, list[CampaignEcuVersion]] = {vin: [] for vin in vins}
    affected = session.execute(
        select(CampaignEcu, Ecu)
        .outerjoin(Vehicle, Vehicle.vin == CampaignEcu.vin)
        .outerjoin(Ecu, (Ecu.vehicle_id == Vehicle.id) & (Ecu.serial == CampaignEcu.ecu_serial))
        .where(CampaignEcu.campaign_id == campaign_id, CampaignEcu.vin.in_(vins))
        .order_by(CampaignEcu.vin, CampaignEcu.ecu_serial)
    )
    for frozen, ecu in affected:
        ecus[frozen.vin].append(
            CampaignEcuVersion(
                serial=frozen.ecu_serial,
                hardware_id=frozen.hardware_id,
                installed_version=ecu.installed_version if ecu else None,
                source="reported" if ecu is not None and ecu.reported_at is not None else "declared",
                reported_at=ecu.reported_at if ecu else None,
            )
        )
    rows = []
    for cv in cars:
        vehicle = vehicles.get(cv.vin)
        if cv.state == _DEFERRED:
            next_try, basis = cv.updated_at + AGENT_RECHECK, "agent_recheck_estimate"
        elif cv.next_retry_at is not None:
            next_try, basis = cv.next_retry_at, "retry_schedule"
        else:
            next_try, basis = None, None
        rows.append(
            CampaignVehicleRow(
                vin=cv.vin,
                model=vehicle.model if vehicle else None,
                model_year=vehicle.model_year if vehicle else None,
                state=VinState(cv.state),
                wave=wave_number(cv.wave),
                reason=reason_code(cv.state, cv.reason, cv.detail),
                reason_text=reason_text(cv.state, cv.reason, cv.detail),
                detail=cv.detail,
                attempts=cv.attempt,
                retries=cv.retries,
                next_try_at=next_try,
                next_try_basis=basis,
                updated_at=cv.updated_at,
                last_seen=vehicle.last_seen if vehicle else None,
                ecus=ecus[cv.vin],
                link=f"/ui/vehicles/{cv.vin}",
            )
        )
    return rows


def page(
    session: Session, campaign_id: int, spec: CarFilter, sort: str | None, cursor: str | None, limit: int
) -> CampaignVehiclePage:
    """One page of the campaign's cars matching ``spec`` in the asked order."""
    cars, next_cursor = listing.page(session, _query(session, campaign_id, spec), LISTING, sort, cursor, limit)
    return CampaignVehiclePage(items=_rows(session, campaign_id, cars), next_cursor=next_cursor)


def check(session: Session, campaign_id: int, sort: str | None) -> None:
    """Refuse an unknown campaign or sort before an export starts streaming."""
    _query(session, campaign_id, CarFilter())
    LISTING.order(sort)


def every(session: Session, campaign_id: int, spec: CarFilter, sort: str | None) -> Iterator[CampaignVehicleRow]:
    """Every matching car in the asked order (a CSV export), a page of queries at a time."""
    query = _query(session, campaign_id, spec)
    for cars in listing.every(session, query, LISTING, sort):
        yield from _rows(session, campaign_id, cars)
