"""The outbox writer: each event a row of ``outbox_events`` in the caller's transaction.

Two ways in, both inside the transaction of the change:

* explicit calls: :func:`vehicles_failed` from ``rollout/transitions.py`` (the one writer of
  a car's state) and :func:`report_ready` from the scheduled export;
* :func:`install` hooks a session factory's ``after_flush``: a campaign stored (launched), a
  campaign's ``status`` changed (paused, threshold tripped, resumed, cancelled, completed), a
  launch request stored (approval requested) and a discrepancy stored (found) each add their
  event in the same flush. A campaign's status is set in several modules (operators' actions,
  the scheduler's tick, rollback); one hook on the flush sees every one of them, including
  those written later, where a call in each would be one more thing to forget.

The payload (``docs/webhooks.md``): ``{"id", "type", "occurred_at", "subject": {...}, "data": {...}}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, event, insert, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm import attributes as orm_attributes

from ota_server.db.models import Campaign, Discrepancy, LaunchRequest, OutboxEvent, Recall
from ota_server.domain.rollout_plan import THRESHOLD_REASON
from ota_server.domain.states import CampaignStatus, VinState

CAMPAIGN_LAUNCHED = "campaign.launched"
CAMPAIGN_PAUSED = "campaign.paused"
CAMPAIGN_THRESHOLD_TRIPPED = "campaign.threshold_tripped"
CAMPAIGN_RESUMED = "campaign.resumed"
CAMPAIGN_CANCELLED = "campaign.cancelled"
CAMPAIGN_COMPLETED = "campaign.completed"
APPROVAL_REQUESTED = "approval.requested"
VEHICLE_FAILED = "vehicle.failed"
DISCREPANCY_FOUND = "discrepancy.found"
REPORT_READY = "report.ready"
EVENT_TYPES: tuple[str, ...] = (
    CAMPAIGN_LAUNCHED,
    CAMPAIGN_PAUSED,
    CAMPAIGN_THRESHOLD_TRIPPED,
    CAMPAIGN_RESUMED,
    CAMPAIGN_CANCELLED,
    CAMPAIGN_COMPLETED,
    APPROVAL_REQUESTED,
    VEHICLE_FAILED,
    DISCREPANCY_FOUND,
    REPORT_READY,
)
# A car's states that are a failure worth telling: failed, rolled back, timed out.
FAILED_STATES = frozenset({VinState.FAILED.value, VinState.ROLLED_BACK.value, VinState.TIMED_OUT.value})


def event_row(type_: str, occurred_at: datetime, subject: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """One ``outbox_events`` row: the payload carries the event's own id, type and time."""
    event_id = str(uuid.uuid4())
    payload = {
        "id": event_id,
        "type": type_,
        "occurred_at": occurred_at.isoformat(),
        "subject": dict(subject),
        "data": dict(data),
    }
    return {"event_id": event_id, "type": type_, "occurred_at": occurred_at, "payload": payload, "fanned_out": False}


def write(connection: Connection | Session, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        connection.execute(insert(OutboxEvent), [dict(r) for r in rows])


def _recalls(connection: Connection | Session, campaign_ids: Iterable[int]) -> dict[int, tuple[int, str]]:
    """campaign id -> (recall id, recall number)."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return {}
    query = (
        select(Campaign.id, Recall.id, Recall.campaign_number)
        .join(Recall, Recall.id == Campaign.recall_id)
        .where(Campaign.id.in_(ids))
    )
    return {cid: (rid, number) for cid, rid, number in connection.execute(query).all()}


def _campaign_subject(campaign_id: int, recalls: Mapping[int, tuple[int, str]]) -> dict[str, Any]:
    recall_id, number = recalls.get(campaign_id, (None, None))
    return {"campaign_id": campaign_id, "recall_id": recall_id, "recall_number": number}


def vehicles_failed(session: Session, events: Sequence[Mapping[str, object]]) -> None:
    """A ``vehicle.failed`` event per car step in ``events`` (``campaign_events`` rows, with their
    ``received_at``) that is a failure."""
    failed = [e for e in events if e.get("state") in FAILED_STATES]
    if not failed:
        return
    recalls = _recalls(session, (int(str(e["campaign_id"])) for e in failed))
    rows = []
    for e in failed:
        subject = _campaign_subject(int(str(e["campaign_id"])), recalls) | {"vin": e["vin"]}
        data = {"state": e["state"], "reason": e.get("reason"), "detail": e.get("detail"), "attempt": e.get("attempt")}
        at = e["received_at"]
        assert isinstance(at, datetime)  # a campaign event row's time
        rows.append(event_row(VEHICLE_FAILED, at, subject, data))
    write(session, rows)


def report_ready(
    session: Session, recall_id: int, recall_number: str, period: str, files: Sequence[str], now: datetime
) -> None:
    """The scheduled export wrote these report files of one recall and period."""
    subject = {"recall_id": recall_id, "recall_number": recall_number}
    write(session, [event_row(REPORT_READY, now, subject, {"period": period, "files": list(files)})])


def _status_event(campaign: Campaign) -> str | None:
    """The event a campaign's new status is, judged from the status it had (None: not one we tell)."""
    history = orm_attributes.get_history(campaign, "status")
    if not history.has_changes() or not history.deleted:
        return None
    before, after = history.deleted[0], campaign.status
    if before == after:
        return None
    if after == CampaignStatus.PAUSED:
        reason = campaign.status_reason or ""
        return CAMPAIGN_THRESHOLD_TRIPPED if reason.startswith(THRESHOLD_REASON) else CAMPAIGN_PAUSED
    if after == CampaignStatus.ACTIVE and before == CampaignStatus.PAUSED:
        return CAMPAIGN_RESUMED
    if after == CampaignStatus.CANCELLED:
        return CAMPAIGN_CANCELLED
    if after == CampaignStatus.COMPLETED:
        return CAMPAIGN_COMPLETED
    return None  # reopened (completed -> active): not an event of its own


def _after_flush(session: Session, _context: object) -> None:
    """The events of what this flush stored (still the flush's view: ``new``, ``dirty`` and history)."""
    launched: list[Campaign] = []
    changed: list[tuple[str, Campaign]] = []
    requests: list[LaunchRequest] = []
    found: list[Discrepancy] = []
    for obj in session.new:
        if isinstance(obj, Campaign):
            launched.append(obj)
        elif isinstance(obj, LaunchRequest):
            requests.append(obj)
        elif isinstance(obj, Discrepancy):
            found.append(obj)
    for obj in session.dirty:
        if isinstance(obj, Campaign):
            kind = _status_event(obj)
            if kind is not None:
                changed.append((kind, obj))
    if not (launched or changed or requests or found):
        return
    connection = session.connection()
    recalls = _recalls(connection, [c.id for c in launched] + [c.id for _, c in changed])
    rows = []
    for c in launched:
        data = {"kind": c.kind, "population": c.population, "parent_campaign_id": c.parent_campaign_id}
        rows.append(event_row(CAMPAIGN_LAUNCHED, c.launched_at, _campaign_subject(c.id, recalls), data))
    for kind, c in changed:
        data = {"status": c.status, "reason": c.status_reason, "kind": c.kind}
        rows.append(event_row(kind, c.status_changed_at or c.launched_at, _campaign_subject(c.id, recalls), data))
    if requests:
        numbers = dict(
            connection.execute(
                select(Recall.id, Recall.campaign_number).where(Recall.id.in_({r.recall_id for r in requests}))
            ).all()
        )
        for r in requests:
            subject = {"recall_id": r.recall_id, "recall_number": numbers.get(r.recall_id)}
            rows.append(event_row(APPROVAL_REQUESTED, r.requested_at, subject, {"requested_by": r.requested_by}))
    for d in found:
        subject = {"vin": d.vin, "campaign_id": d.campaign_id, "ecu_serial": d.ecu_serial}
        data = {"kind": d.kind, "version": d.version, "hardware_id": d.hardware_id, "detail": d.detail}
        rows.append(event_row(DISCREPANCY_FOUND, d.found_at, subject, data))
    write(connection, rows)


def install(sessions: sessionmaker[Session]) -> None:
    """Write the flush-seen events (see the module's doc) for every session of ``sessions``."""
    if not event.contains(sessions, "after_flush", _after_flush):
        event.listen(sessions, "after_flush", _after_flush)
