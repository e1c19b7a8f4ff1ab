"""The one writer of a campaign car's state and of its event rows.

Every change of a car's state in a campaign goes through here, whoever causes it: the car's
signed reports (ingest, in batches), the scheduler (timeouts, retries, notices sent), the
operator (dealer remedy, inspection, unreachable, cancel) and a version manifest showing the
fix. Each move is checked by the state machine (:mod:`ota_server.domain.states`) unless the
caller already asked it (ingest orders a car's reports and asks before it moves one), and
leaves its event row in the car's history. ``tests/test_boundaries.py`` checks that no other
module assigns a car's state, builds or inserts its rows or updates its table.

Bulk forms keep the callers' speed: ingest moves many cars per transaction as plain locked rows
(:class:`CarRow`, no ORM objects), writes each changed car back once however many of its steps
moved it, and inserts their events in one statement; a launch inserts its cars in one
statement; a tick marks its notified cars with one UPDATE per VIN chunk.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import ColumnElement, Table, insert, select, update
from sqlalchemy.orm import Session

from firmware_bundles.messages import ReportState
from ota_server.db.copy_rows import insert_rows
from ota_server.db.models import CampaignEvent, CampaignVehicle
from ota_server.db.one_of import one_of
from ota_server.db.update_rows import update_rows
from ota_server.domain.states import Cause, VinState, check
from ota_server.events import outbox

VIN_LIST_CHUNK = 5000  # VINs per UPDATE ... WHERE vin IN (...) of a campaign's rows
_FAILED_ECU_STATES = (ReportState.FAILED, ReportState.ROLLED_BACK)


def new_nonce() -> str:
    """A notice's nonce: a car's report counts only with the nonce of its current notice."""
    return secrets.token_urlsafe(24)


# -- cars joining a campaign ------------------------------------------------------------------


def enroll(session: Session, rows: Sequence[Mapping[str, object]]) -> None:
    """Insert a campaign's new cars (a launch, a rollback campaign, late joiners) in one stream.

    Each row starts ``pending`` unless it says otherwise (a car whose manifests already show
    the fix starts remedied: :func:`already_remedied_row`). Rows that all name the same columns
    go by ``COPY`` (:func:`ota_server.db.copy_rows.insert_rows`): a 30,000-car launch's
    executemany was 1.2 s of its approval (issue 19); rows that differ by the INSERT.
    """
    full = [{"state": VinState.PENDING.value} | dict(row) for row in rows]
    if not full:
        return
    columns = full[0].keys()
    if all(row.keys() == columns for row in full):
        insert_rows(session, CampaignVehicle, full)
    else:
        session.execute(insert(CampaignVehicle), full)


def already_remedied_row(vin: str, reason: str) -> dict[str, object]:
    """The columns of a launch's car whose version manifest already shows the fix."""
    return {
        "state": VinState.REMEDIED.value,
        "reason": reason,
        "progress_rank": ReportState.REMEDIED.rank,
        "detail": f"{vin}'s version manifest already shows the fix",
    }


# -- the server's own moves -------------------------------------------------------------------


def _record_event(
    session: Session, cv: CampaignVehicle, source: str, now: datetime, *, reason: str | None, detail: str | None
) -> None:
    """Append the server's own step to the car's history (once per progress key and state)."""
    seen = session.scalar(
        select(CampaignEvent.id).where(
            CampaignEvent.campaign_id == cv.campaign_id,
            CampaignEvent.vin == cv.vin,
            CampaignEvent.attempt == cv.attempt,
            CampaignEvent.deferrals == cv.deferrals,
            CampaignEvent.state == cv.state,
        )
    )
    if seen is None:
        session.add(CampaignEvent(**_event_row(cv, source, now, reason=reason, detail=detail)))


def _event_row(
    cv: CampaignVehicle, source: str, now: datetime, *, reason: str | None, detail: str | None
) -> dict[str, object]:
    """The event row of the car's current state (its progress key), taken by ``source`` at ``now``."""
    return {
        "campaign_id": cv.campaign_id,
        "vin": cv.vin,
        "attempt": cv.attempt,
        "deferrals": cv.deferrals,
        "state": cv.state,
        "reason": reason,
        "detail": detail,
        "received_at": now,
        "source": source,
    }


def move(
    session: Session,
    cv: CampaignVehicle,
    dst: VinState,
    cause: Cause,
    now: datetime,
    *,
    reason: str | None = None,
    detail: str | None = None,
) -> None:
    """Move one car by a server-side cause (checked by the state machine) and record it.

    Raises :class:`~ota_server.domain.states.IllegalTransition` if the state machine forbids it.
    """
    check(VinState(cv.state), dst, cause)
    cv.state, cv.reason, cv.detail, cv.updated_at = dst.value, reason, detail, now
    _record_event(session, cv, cause.value, now, reason=reason, detail=detail)
    outbox.vehicles_failed(session, [_event_row(cv, cause.value, now, reason=reason, detail=detail)])


def retry(session: Session, cv: CampaignVehicle, now: datetime) -> str:
    """A failed or timed-out car back to ``pending`` with a new notice (a new nonce), notified ``now``.

    Returns the new nonce.
    """
    move(session, cv, VinState.PENDING, Cause.RETRY, now, detail=f"retry {cv.retries + 1}")
    cv.nonce = new_nonce()
    cv.retries += 1
    cv.deferrals, cv.progress_rank, cv.next_retry_at = 0, -1, None
    cv.notified_at, cv.notice_published_at = now, None
    return cv.nonce


def record_by_operator(
    session: Session,
    cv: CampaignVehicle,
    dst: VinState,
    now: datetime,
    *,
    actor: str,
    reason: str | None = None,
    detail: str | None = None,
    evidence_ref: str | None = None,
) -> None:
    """An operator's record (dealer remedy, inspection, unreachable), its evidence; no retry follows it."""
    move(session, cv, dst, Cause.OPERATOR, now, reason=reason, detail=detail)
    cv.recorded_by, cv.evidence_ref, cv.next_retry_at = actor, evidence_ref, None


def withdraw(session: Session, cv: CampaignVehicle, now: datetime) -> None:
    """The campaign was cancelled before this car started."""
    move(session, cv, VinState.WITHDRAWN, Cause.CANCEL, now, detail="campaign cancelled")
    cv.next_retry_at = None


def remedied_by_manifest(
    session: Session, cv: CampaignVehicle, now: datetime, *, source: str, reason: str, detail: str, evidence_ref: str
) -> None:
    """A car's version manifest shows the fix installed outside the campaign: remedied at a dealer.

    The caller asked the state machine (as an operator's record); the event names ``source``.
    """
    check(VinState(cv.state), VinState.REMEDIED_AT_DEALER, Cause.OPERATOR)
    cv.state, cv.reason, cv.updated_at = VinState.REMEDIED_AT_DEALER.value, reason, now
    cv.detail, cv.recorded_by, cv.evidence_ref, cv.next_retry_at = detail, source, evidence_ref, None
    session.execute(insert(CampaignEvent).values(**_event_row(cv, source, now, reason=reason, detail=detail)))


# -- the car's own reports (ingest, batched) --------------------------------------------------

_CARS = cast(Table, CampaignVehicle.__table__)
_EVENTS = cast(Table, CampaignEvent.__table__)


@dataclass(slots=True)
class CarRow:
    """A campaign car's row as ingest reads it: the columns its reports are judged by, no ORM object.

    Ingest locks and reads these (:func:`car_rows`), moves them in memory by each report
    (:func:`by_car_report`, :func:`confirmed_by_car`) and writes back only the changed ones,
    once per car however many steps moved it (:func:`write_car_rows`): no identity map, no
    unit of work, one executemany per kind of change.
    """

    campaign_id: int
    vin: str
    nonce: str
    state: str
    attempt: int
    deferrals: int
    progress_rank: int
    reason: str | None = None
    detail: str | None = None
    updated_at: datetime | None = None
    failed_ecu: str | None = None
    moved: bool = False  # by a report: every column a move sets is written back
    confirmed: bool = False  # only its deferrals and rank moved on (a state confirmed)


def locked_car_rows(session: Session, where: ColumnElement[bool]) -> list[CarRow]:
    """The cars' rows ``where`` says, locked in (VIN, campaign) order (FOR UPDATE), as :class:`CarRow`."""
    found = session.execute(
        select(
            _CARS.c.campaign_id,
            _CARS.c.vin,
            _CARS.c.nonce,
            _CARS.c.state,
            _CARS.c.attempt,
            _CARS.c.deferrals,
            _CARS.c.progress_rank,
        )
        .where(where)
        .order_by(_CARS.c.vin, _CARS.c.campaign_id)
        .with_for_update()
    )
    return [CarRow(c, v, n, s, a, d, r) for c, v, n, s, a, d, r in found]


def write_car_rows(session: Session, rows: Iterable[CarRow]) -> None:
    """Write back the rows the cars' reports changed: one UPDATE per kind of change for the
    whole batch (:func:`ota_server.db.update_rows.update_rows`), rows in VIN order."""
    moved: list[dict[str, object]] = []
    confirmed: list[dict[str, object]] = []
    for row in sorted(rows, key=lambda r: (r.vin, r.campaign_id)):
        if row.moved:
            moved.append(
                {
                    "campaign_id": row.campaign_id,
                    "vin": row.vin,
                    "state": row.state,
                    "attempt": row.attempt,
                    "deferrals": row.deferrals,
                    "progress_rank": row.progress_rank,
                    "reason": row.reason,
                    "detail": row.detail,
                    "updated_at": row.updated_at,
                    "failed_ecu": row.failed_ecu,
                }
            )
        elif row.confirmed:
            confirmed.append(
                {
                    "campaign_id": row.campaign_id,
                    "vin": row.vin,
                    "deferrals": row.deferrals,
                    "progress_rank": row.progress_rank,
                }
            )
    key = ("campaign_id", "vin")
    update_rows(session, _CARS, moved, key=key, also={"next_retry_at": None})
    update_rows(session, _CARS, confirmed, key=key)


def by_car_report(
    cv: CampaignVehicle | CarRow,
    state: ReportState,
    *,
    attempt: int,
    deferrals: int,
    reason: str | None,
    detail: str | None,
    ecu_serial: str | None,
    at: datetime,
) -> None:
    """Move a car to what its signed report says.

    Ingest has checked the report's order and asked the state machine (for a whole batch at a
    time); its event row goes in with the batch's others (:func:`record_car_events`).
    """
    cv.state, cv.attempt, cv.updated_at = state.value, attempt, at
    cv.deferrals, cv.progress_rank = deferrals, state.rank
    cv.reason, cv.detail = reason, detail
    cv.failed_ecu = ecu_serial if state in _FAILED_ECU_STATES else None
    if isinstance(cv, CarRow):
        cv.moved = True  # next_retry_at cleared when written back
    else:
        cv.next_retry_at = None


def confirmed_by_car(cv: CampaignVehicle | CarRow, state: ReportState, *, deferrals: int) -> None:
    """A report of the state the car is in already, further on (e.g. a withdrawal confirmed)."""
    cv.deferrals, cv.progress_rank = deferrals, state.rank
    if isinstance(cv, CarRow):
        cv.confirmed = True


def record_car_events(session: Session, events: Sequence[Mapping[str, object]]) -> None:
    """A batch of the cars' own steps, one statement (each row as :class:`CampaignEvent`'s columns);
    each failure among them is a ``vehicle.failed`` event in the same transaction."""
    if events:
        # COPY on PostgreSQL: six rows a car, an executemany's per-row Execute was ingest's top statement
        insert_rows(session, CampaignEvent, [{"source": Cause.CAR.value} | dict(e) for e in events])
        outbox.vehicles_failed(session, events)


# -- notices ----------------------------------------------------------------------------------


def mark_notified(session: Session, campaign_id: int, vins: Sequence[str], now: datetime) -> None:
    """These ``pending`` cars were sent their first notice ``now`` (not confirmed published yet)."""
    for start in range(0, len(vins), VIN_LIST_CHUNK):
        session.execute(
            update(CampaignVehicle)
            .where(
                CampaignVehicle.campaign_id == campaign_id,
                one_of(CampaignVehicle.vin, vins[start : start + VIN_LIST_CHUNK]),
            )
            .values(notified_at=now, notice_published_at=None)
            .execution_options(synchronize_session=False)
        )


def mark_published(session: Session, campaign_id: int, vins: Sequence[str], now: datetime) -> None:
    """The broker accepted these cars' notices or withdrawals ``now``."""
    # Large chunks: a query's cost is mostly reading the campaign's rows (a fresh launch has no
    # statistics yet for the planner to prefer the primary key), not the length of its VIN list.
    for start in range(0, len(vins), VIN_LIST_CHUNK):
        session.execute(
            update(CampaignVehicle)
            .where(
                CampaignVehicle.campaign_id == campaign_id,
                one_of(CampaignVehicle.vin, vins[start : start + VIN_LIST_CHUNK]),
            )
            .values(notice_published_at=now)
            .execution_options(synchronize_session=False)
        )


def withdrawal_owed(cv: CampaignVehicle) -> None:
    """The withdrawal, not the notice, is now what must reach this notified car's broker topic."""
    cv.notice_published_at = None
