"""Customer care's view of one VIN: every notice and step across campaigns, and the next step.

The timeline merges the owner-notification log (notices, withdrawals) with the event
history (the car's reports, operator records, timeouts, retries, cancels), oldest first.
The car's version manifests (what each ECU runs, in its own signed word) and the
discrepancies they showed are on it too. The next step is derived from the car's current row in each campaign by
:func:`next_step`, a pure function, and the most pressing one becomes the VIN's headline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import normalize_vin, validate_vin
from firmware_bundles.window import parse_hold
from ota_server.db.models import (
    Campaign,
    CampaignEvent,
    CampaignVehicle,
    Discrepancy,
    EcuReport,
    NoticeLog,
    OwnerNotification,
    Recall,
    Vehicle,
)
from ota_server.domain.reasons import deferral_code, reason_code, reason_text, said
from ota_server.domain.rollout_plan import RolloutPlan, missed_words
from ota_server.domain.states import ERRORS, VinState
from ota_server.domain.waves import wave_number
from ota_server.errors import InvalidInput, NotFound
from ota_server.rollout.campaign_tick import stalled
from ota_server.schemas import DiscrepancyPublic, EcuPublic
from ota_server.services import owner_notifications
from ota_server.services.campaign_view import schedule, shown_plan
from ota_server.services.campaigns import ACTIVE, CANCELLED, PAUSED, ROLLBACK
from ota_server.web.schemas import CampaignOfVin, TimelineEntry, VehicleTimeline

Action = Literal["none", "wait", "dealer"]
S = VinState

# What a deferred car waits for, by the code its report's detail starts with (vehicle_agent.gate).
WAITING_FOR = {
    "not_parked": "the car to be parked",
    "ignition_on": "the car to have its ignition switched off",
    "battery_low": "the car to have its battery charged",
    "network_not_allowed": "the car to be on an allowed network (e.g. home Wi-Fi)",
    "owner_postponed": "the owner to accept the update",
    "consent_outdated": "the owner to accept the changed update",
    "metadata_expired": "the car to fetch fresh signed metadata",
}
_STEP_WORDS = {
    S.NOTIFIED: "Car received the notice",
    S.CONSENTED: "Owner accepted the update",
    S.DOWNLOADING: "Downloading the update",
    S.VERIFYING: "Verifying the download",
    S.INSTALLING: "Installing into the spare slot",
    S.REBOOTING: "Rebooting into the new software",
}
_ERROR_VERBS = {S.FAILED: "failed", S.ROLLED_BACK: "rolled back", S.TIMED_OUT: "timed out"}


def when(at: datetime | None) -> str:
    """A time as the pages show it: UTC, to the minute."""
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else "never"


def status_why(status: str, reason: str | None) -> str:
    """What follows "the campaign is <status>": `` by alice (checking)`` for an operator's
    ``<status> by alice: checking``, `` (why)`` for any other reason (never the status twice)."""
    if not reason:
        return ""
    if not reason.startswith(f"{status} by "):
        return f" ({reason})"
    who, _, why = reason.removeprefix(f"{status} ").partition(": ")
    return f" {who}" + (f" ({why})" if why else "")


def times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


@dataclass(frozen=True)
class CarRow:
    """What :func:`next_step` needs of one car in one campaign."""

    state: str
    reason: str | None
    detail: str | None
    updated_at: datetime
    notified_at: datetime | None
    wave: int
    retries: int
    next_retry_at: datetime | None
    recorded_by: str | None = None
    evidence_ref: str | None = None
    errors_so_far: int = 0  # failed / rolled back / timed out events in this campaign, all attempts


@dataclass(frozen=True)
class CampaignRow:
    status: str
    status_reason: str | None
    current_wave: int
    kind: str
    max_retries: int
    starts_at: datetime | None = None
    scheduled: bool = False
    stalled: str | None = None  # the open wave can no longer pass (campaign_tick.stalled): what and who acts


def next_step(car: CarRow, campaign: CampaignRow, *, online: bool, last_seen: datetime | None) -> tuple[str, Action]:
    """What happens next for this car in this campaign, in words an owner can be told, and who acts."""
    state = S(car.state)
    rollback = campaign.kind == ROLLBACK
    if state is S.WITHDRAWN:
        why = status_why(CANCELLED, campaign.status_reason)
        return f"Nothing to do: the campaign was cancelled{why} before this car started.", "none"
    if state is S.REMEDIED:
        if rollback:
            return (
                f"Nothing to do now: the car was returned to its previous software on {when(car.updated_at)} "
                "because the update was withdrawn; a new remedy will follow.",
                "none",
            )
        return f"Nothing to do: remedied over the air on {when(car.updated_at)}.", "none"
    if state is S.REMEDIED_AT_DEALER:
        ref = f", repair order {car.evidence_ref}" if car.evidence_ref else ""
        by = f", recorded by {car.recorded_by}" if car.recorded_by else ""
        return f"Nothing to do: remedied at a dealer on {when(car.updated_at)}{ref}{by}.", "none"
    if state is S.INSPECTED_NOT_NEEDED:
        return f"Nothing to do: inspected on {when(car.updated_at)}, the remedy is not needed.", "none"
    if state is S.UNREACHABLE:
        return (
            f"Recorded as unreachable: {said(car.reason or 'other')}, on {when(car.updated_at)}"
            f"{f' by {car.recorded_by}' if car.recorded_by else ''}. If the owner has the car, book a dealer visit.",
            "dealer",
        )
    if state is S.DECLINED:
        return (
            f"The owner declined the update on {when(car.updated_at)}. Offer a dealer visit, "
            "or an operator can send a new notice (retry).",
            "dealer",
        )
    if state in ERRORS:
        verb = _ERROR_VERBS[state]
        reason = said(car.reason or "unknown")
        if car.next_retry_at is not None:
            return (
                f"Wait: the server sends a new notice by itself at {when(car.next_retry_at)} "
                f"(retry {car.retries + 1} of {campaign.max_retries}); the car {verb}: {reason}.",
                "wait",
            )
        return f"Book a dealer visit: the car {verb} {times(max(1, car.errors_so_far))}; last: {reason}.", "dealer"
    if state is S.DEFERRED:
        held = parse_hold(car.detail)
        if held is not None:
            return (
                f"Waiting for the car's maintenance window ({held.window}): it installs by itself when the window "
                f"opens, next at {when(held.next_try_at.astimezone(UTC))} ({held.next_try_at.strftime('%H:%M')} local; "
                f"deferred since {when(car.updated_at)}).",
                "wait",
            )
        code = deferral_code(car.detail)
        waiting = WAITING_FOR.get(code or "", "the car to meet its preconditions")
        why = f": {said(code)}" if code else ""
        return (
            f"Waiting for {waiting}; deferred since {when(car.updated_at)}{why}. "
            "The car installs by itself then, nothing to do.",
            "wait",
        )
    if state is S.PENDING:
        if campaign.status == CANCELLED:
            return "Nothing to do: the campaign was cancelled.", "none"
        if car.notified_at is None:
            if campaign.stalled is not None and car.wave > campaign.current_wave:
                return f"Waiting: {campaign.stalled}.", "wait"
            if campaign.status == PAUSED:
                why = status_why(PAUSED, campaign.status_reason)
                return (
                    f"Waiting: the campaign is paused{why}; the car gets its notice when an operator resumes it.",
                    "wait",
                )
            if campaign.starts_at is not None and campaign.scheduled:
                start = when(campaign.starts_at)
                if car.wave > campaign.current_wave:
                    return (
                        f"Waiting for the campaign to start at {start}; the car is in wave {wave_number(car.wave)} "
                        "and is notified when that wave opens.",
                        "wait",
                    )
                return f"Waiting for the campaign to start at {start}; the car is notified then.", "wait"
            if car.wave > campaign.current_wave:
                return (
                    f"Waiting for wave {wave_number(car.wave)} to open "
                    f"(wave {wave_number(campaign.current_wave)} is rolling out); "
                    "the car is notified then.",
                    "wait",
                )
            return "Waiting for the notice to be sent (rate limit or maintenance window).", "wait"
        if not online:
            return (
                f"Notice sent {when(car.notified_at)}; waiting for the car to come online "
                f"(last seen {when(last_seen)}).",
                "wait",
            )
        return f"Notice sent {when(car.notified_at)}; waiting for the car to acknowledge it.", "wait"
    if state is S.NOTIFIED:
        return "The car has the notice and is checking its preconditions; nothing to do.", "wait"
    if state is S.CONSENTED:
        return "The owner accepted; the car installs once it is parked and ready.", "wait"
    doing = _STEP_WORDS.get(state, str(state)).lower()
    return f"Nothing to do: the car is {doing} now (since {when(car.updated_at)}).", "wait"


def _event_entry(event: CampaignEvent, number: str, rows: dict[int, CampaignVehicle]) -> TimelineEntry:
    state = S(event.state)
    reason, detail = event.reason, event.detail
    kind: str
    if event.source == "manifest":
        kind = "remedied"
        summary = (
            "Remedied: the car's version manifest shows the fix, installed outside this campaign (e.g. a workshop)"
            if reason != "already_remedied"
            else "Remedied: the car already ran the fix at launch"
        )
    elif event.source == "operator":
        kind = "operator"
        cv = rows.get(event.campaign_id)
        by = f" (recorded by {cv.recorded_by})" if cv is not None and cv.state == event.state and cv.recorded_by else ""
        words = {
            S.REMEDIED_AT_DEALER: "Remedied at a dealer",
            S.INSPECTED_NOT_NEEDED: "Inspected: remedy not needed",
            S.UNREACHABLE: f"Recorded unreachable: {said(reason or 'other')}",
        }.get(state, f"Operator recorded {state}")
        summary = f"{words}{by}" + (f": {detail}" if detail else "")
    elif event.source == "timeout":
        kind, summary = "timeout", f"Timed out: {detail or 'no report in time'}"
    elif event.source == "retry":
        kind, summary = "retry", f"New notice issued ({detail or 'retry'})"
    elif event.source == "cancel":
        kind, summary = "cancel", "Withdrawn: the campaign was cancelled"
    elif state is S.DEFERRED:
        held = deferral_code(detail)
        own = (detail or "").split(":", 1)[1].strip() if held else detail
        kind = "deferral"
        summary = (
            f"Car deferred the update: {said(held) or 'preconditions not met'}"
            + (f"; the car said: {own}" if own else "")
            + f" (deferral {event.deferrals})"
        )
    elif state in (S.FAILED, S.ROLLED_BACK):
        kind = "failure"
        what = "Failed" if state is S.FAILED else "Rolled back to the previous software"
        summary = f"{what}: {said(reason or 'unknown')}" + (f"; the car said: {detail}" if detail else "")
    elif state is S.REMEDIED:
        kind, summary = "remedied", "Remedied: the new software booted and passed its health check"
    elif state is S.DECLINED:
        kind, summary = "declined", "The owner declined the update"
    elif state is S.WITHDRAWN:
        kind, summary = "cancel", "Car stopped: the campaign was withdrawn"
    else:
        kind, summary = "report", _STEP_WORDS.get(state, f"Car reported {state}")
    return TimelineEntry.model_validate(
        {
            "at": event.received_at,
            "campaign_id": event.campaign_id,
            "recall_number": number,
            "kind": kind,
            "state": event.state,
            "attempt": event.attempt,
            "reason": reason,
            "detail": detail,
            "source": event.source,
            "summary": summary,
        }
    )


def _manifest_entries(reports: list[EcuReport]) -> list[TimelineEntry]:
    """One entry per accepted manifest: what every ECU said it runs."""
    by_counter: dict[int, list[EcuReport]] = {}
    for row in reports:
        by_counter.setdefault(row.manifest_counter, []).append(row)
    entries = []
    for counter, rows in by_counter.items():
        ecus = ", ".join(f"{r.hardware_id} {r.version} ({r.ecu_serial})" for r in rows)
        entries.append(
            TimelineEntry(
                at=rows[0].received_at,
                campaign_id=None,
                recall_number=None,
                kind="manifest",
                state=None,
                attempt=None,
                reason=rows[0].reason,
                detail=f"manifest {counter}",
                source="car",
                summary=f"Car's version manifest ({rows[0].reason}): {ecus}",
            )
        )
    return entries


def _discrepancy_entry(row: Discrepancy) -> TimelineEntry:
    return TimelineEntry(
        at=row.found_at,
        campaign_id=row.campaign_id,
        recall_number=None,
        kind="discrepancy",
        state=None,
        attempt=None,
        reason=row.kind,
        detail=row.detail,
        source="car",
        summary=f"Discrepancy ({row.kind.replace('_', ' ')}) on ECU {row.ecu_serial}: {row.detail}",
    )


_TOLD = {
    "letter": "Owner letter",
    "consent_request": "Owner asked for consent",
    "consent_answer": "Owner answered",
    "notice": "Owner notice",
    "reminder": "Owner reminder",
    "withdrawal": "Owner told of the withdrawal",
}


def _told_entry(row: OwnerNotification, number: str | None) -> TimelineEntry:
    """What the owner was told outside the MQTT notices (those are the notice entries): letters, consent."""
    what = _TOLD.get(row.kind, row.kind)
    detail = f" ({row.detail})" if row.detail else ""
    shown = row.text if len(row.text) <= 300 else row.text[:300] + "…"
    return TimelineEntry(
        at=row.at,
        campaign_id=row.campaign_id,
        recall_number=number,
        kind="owner_notification",
        state=None,
        attempt=None,
        reason=row.kind,
        detail=row.text or f"sha256 {row.text_sha256}",
        source=row.recorded_by or "server",
        summary=f"{what} by {row.channel.replace('_', ' ')}{detail}: {shown or 'sha256 ' + row.text_sha256}",
    )


def _issued_at(row: NoticeLog) -> datetime:
    """When the server issued the message (in its payload): the broker's acknowledgement
    (``published_at``) may come after the car already answered it."""
    try:
        issued = datetime.fromisoformat(str(row.payload["issued_at"]))
    except (KeyError, ValueError):
        return row.published_at
    return min(issued, row.published_at) if issued.tzinfo else row.published_at


def _notice_entry(row: NoticeLog, number: str) -> TimelineEntry:
    withdrawal = row.kind == "withdrawal"
    title = str(row.payload.get("title") or "")
    summary = "Withdrawal sent to the car" if withdrawal else f"Notice sent to the car: {title}".rstrip(": ")
    return TimelineEntry(
        at=_issued_at(row),
        campaign_id=row.campaign_id,
        recall_number=number,
        kind="withdrawal" if withdrawal else "notice",
        state=None,
        attempt=None,
        reason=None,
        detail=None,
        source="server",
        summary=summary,
    )


def normalised_vin(raw: str) -> str:
    try:
        return validate_vin(raw)
    except InvalidVin as exc:
        raise InvalidInput(f"not a valid VIN: {exc}") from exc


_PRIORITY: dict[Action, int] = {"dealer": 2, "wait": 1, "none": 0}


def _stalled(session: Session, campaign: Campaign, plan: RolloutPlan | None, cv: CampaignVehicle) -> str | None:
    """For a car of a later wave: its campaign's open wave can no longer pass, in words with who acts."""
    if plan is None or cv.wave <= campaign.current_wave or campaign.status not in (ACTIVE, PAUSED):
        return None
    gate = stalled(session, campaign, plan)
    if gate is None:
        return None
    return (
        f"{missed_words(wave_number(campaign.current_wave), gate)}; an operator can retry its failed cars "
        f"(ota campaigns retry {campaign.id} / the Retry button) or cancel the campaign"
    )


def timeline(session: Session, raw_vin: str, now: datetime) -> VehicleTimeline:
    vin = normalize_vin(raw_vin)
    vehicle = session.scalar(select(Vehicle).where(Vehicle.vin == vin))
    if vehicle is None:
        normalised_vin(vin)  # a malformed VIN is a 422 saying why, a valid unknown one a 404
        raise NotFound(f"no vehicle with VIN {vin}")
    rows = session.execute(
        select(CampaignVehicle, Campaign, Recall)
        .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
        .join(Recall, Recall.id == Campaign.recall_id)
        .where(CampaignVehicle.vin == vin)
        .order_by(CampaignVehicle.campaign_id)
    ).all()
    numbers = {campaign.id: recall.campaign_number for _, campaign, recall in rows}
    by_campaign = {cv.campaign_id: cv for cv, _, _ in rows}
    events = session.scalars(select(CampaignEvent).where(CampaignEvent.vin == vin).order_by(CampaignEvent.id)).all()
    notices = session.scalars(select(NoticeLog).where(NoticeLog.vin == vin).order_by(NoticeLog.id)).all()
    entries = [_notice_entry(n, numbers.get(n.campaign_id, "?")) for n in notices]
    entries += [_event_entry(e, numbers.get(e.campaign_id, "?"), by_campaign) for e in events]
    manifests = session.scalars(select(EcuReport).where(EcuReport.vin == vin).order_by(EcuReport.id)).all()
    entries += _manifest_entries(list(manifests))
    findings = session.scalars(select(Discrepancy).where(Discrepancy.vin == vin).order_by(Discrepancy.id.desc())).all()
    entries += [_discrepancy_entry(d) for d in findings]
    told = [t for t in owner_notifications.of_vin(session, vin) if t.channel != "mqtt"]
    recall_numbers: dict[int, str] = {
        rid: number
        for rid, number in session.execute(
            select(Recall.id, Recall.campaign_number).where(Recall.id.in_({t.recall_id for t in told}))
        )
    }
    entries += [_told_entry(t, recall_numbers.get(t.recall_id)) for t in told]
    # Oldest first; at the same instant a notice comes before what the car did with it.
    order = {"retry": -1, "notice": 0, "withdrawal": 1}
    entries.sort(key=lambda e: (e.at, order.get(e.kind, 2)))
    error_states = {s.value for s in ERRORS}
    rolled_back_by = {campaign.parent_campaign_id: campaign.id for _, campaign, _ in rows if campaign.kind == ROLLBACK}
    campaigns: list[CampaignOfVin] = []
    for cv, campaign, recall in rows:
        errors = sum(1 for e in events if e.campaign_id == cv.campaign_id and e.state in error_states)
        car = CarRow(
            state=cv.state,
            reason=cv.reason,
            detail=cv.detail,
            updated_at=cv.updated_at,
            notified_at=cv.notified_at,
            wave=cv.wave,
            retries=cv.retries,
            next_retry_at=cv.next_retry_at,
            recorded_by=cv.recorded_by,
            evidence_ref=cv.evidence_ref,
            errors_so_far=errors,
        )
        plan = shown_plan(recall, campaign)
        starts_at, scheduled = schedule(plan, campaign.status, now)
        context = CampaignRow(
            status=campaign.status,
            status_reason=campaign.status_reason,
            current_wave=campaign.current_wave,
            kind=campaign.kind,
            max_retries=(plan or RolloutPlan()).max_retries,
            starts_at=starts_at,
            scheduled=scheduled,
            stalled=_stalled(session, campaign, plan, cv),
        )
        step, action = next_step(car, context, online=vehicle.online, last_seen=vehicle.last_seen)
        child = rolled_back_by.get(campaign.id)
        if child is not None:
            step, action = f"Superseded for this car by rollback campaign {child} (see there).", "none"
        campaigns.append(
            CampaignOfVin(
                campaign_id=campaign.id,
                recall_id=recall.id,
                recall_number=recall.campaign_number,
                title=recall.title,
                safety_recall=recall.safety_recall,
                kind=campaign.kind,
                campaign_status=campaign.status,
                campaign_scheduled=scheduled,
                starts_at=starts_at,
                state=cv.state,
                reason=reason_code(cv.state, cv.reason, cv.detail),
                reason_text=reason_text(cv.state, cv.reason, cv.detail),
                detail=cv.detail,
                attempt=cv.attempt,
                retries=cv.retries,
                next_retry_at=cv.next_retry_at,
                wave=wave_number(cv.wave),
                updated_at=cv.updated_at,
                recorded_by=cv.recorded_by,
                evidence_ref=cv.evidence_ref,
                next_step=step,
                action=action,
            )
        )
    if campaigns:
        # The most pressing campaign; among equals the latest (a newer recall is fresher news).
        top = max(reversed(campaigns), key=lambda c: _PRIORITY[c.action])
        headline, action = f"{top.recall_number}: {top.next_step}", top.action
    else:
        headline, action = "Nothing to do: this car is in no recall campaign.", "none"
    return VehicleTimeline(
        vin=vehicle.vin,
        make=vehicle.make,
        model=vehicle.model,
        model_year=vehicle.model_year,
        online=vehicle.online,
        last_seen=vehicle.last_seen,
        ecus=[EcuPublic.model_validate(e) for e in vehicle.ecus],
        discrepancies=[DiscrepancyPublic.model_validate(d) for d in findings],
        campaigns=campaigns,
        entries=entries,
        next_step=headline,
        action=action,
    )
