"""A campaign's dashboard: funnel, remedied over time, waves and their gates, the failure pattern.

Built on :func:`ota_server.services.progress.progress` (the counts operators already trust)
plus the event history. :func:`fingerprint` is the cheap "has anything changed?" the live
stream asks every second before it builds a whole snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import and_, distinct, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from ota_server.db.models import Campaign, CampaignEvent, CampaignVehicle, Ecu, NoticeLog, Recall, Release, Vehicle
from ota_server.domain.reasons import plain_words
from ota_server.domain.rollout_plan import RolloutPlan
from ota_server.domain.states import ERRORS, IN_FLIGHT, SUCCESS, VinState
from ota_server.domain.waves import wave_index
from ota_server.errors import NotFound
from ota_server.schemas import Population
from ota_server.services import population as populations
from ota_server.services import progress as progress_service
from ota_server.services.campaign_view import schedule, shown_plan
from ota_server.services.campaigns import ROLLBACK
from ota_server.web.schemas import (
    CampaignSummary,
    Dashboard,
    FailingCar,
    FailureBreakdown,
    FailureGroup,
    FunnelStage,
    SeriesPoint,
    Share,
    WaveView,
)

MAX_POINTS = 240  # a chart needs no more; the last point of each bucket is kept
RECENT_FAILURES = 25

_ERRORS = [s.value for s in ERRORS]
_SUCCESS = [s.value for s in SUCCESS]
_ANSWERED_OR_LATER = None  # any car report
_DOWNLOADING_OR_LATER = [
    VinState.DOWNLOADING.value,
    VinState.VERIFYING.value,
    VinState.INSTALLING.value,
    VinState.REBOOTING.value,
    VinState.REMEDIED.value,
    VinState.ROLLED_BACK.value,
]
_INSTALLING_OR_LATER = [
    VinState.INSTALLING.value,
    VinState.REBOOTING.value,
    VinState.REMEDIED.value,
    VinState.ROLLED_BACK.value,
]
_OTHER = [VinState.UNREACHABLE.value, VinState.DECLINED.value, VinState.WITHDRAWN.value]


def _campaign(session: Session, campaign_id: int) -> tuple[Campaign, Recall, Release]:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    recall = session.get(Recall, campaign.recall_id)
    release = session.get(Release, campaign.release_id)
    assert recall is not None and release is not None  # foreign keys
    return campaign, recall, release


def fingerprint(session: Session, campaign_id: int) -> tuple[object, ...]:
    """Changes whenever the dashboard would: the campaign row, a new event, a notice, a retry."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    events = session.execute(
        select(func.max(CampaignEvent.id), func.count()).where(CampaignEvent.campaign_id == campaign_id)
    ).one()
    notices = session.scalar(select(func.max(NoticeLog.id)).where(NoticeLog.campaign_id == campaign_id))
    in_campaign = CampaignVehicle.campaign_id == campaign_id
    released = session.scalar(select(func.count()).where(in_campaign, CampaignVehicle.notified_at.is_not(None)))
    retries = session.scalar(select(func.count()).where(in_campaign, CampaignVehicle.next_retry_at.is_not(None)))
    return (
        campaign.status,
        campaign.status_reason,
        campaign.current_wave,
        campaign.population,
        campaign.error_baseline,
        tuple(events),
        notices,
        released,
        retries,
    )


def _cumulative(times: Iterable[datetime]) -> list[SeriesPoint]:
    ordered = sorted(times)
    points = [SeriesPoint(at=at, cars=i + 1) for i, at in enumerate(ordered)]
    if len(points) <= MAX_POINTS:
        return points
    last = len(points) - 1  # keep the first and the last point, evenly spaced ones between
    return [points[round(i * last / (MAX_POINTS - 1))] for i in range(MAX_POINTS)]


def _reached(session: Session, campaign_id: int, states: Sequence[str] | None) -> int:
    query = select(func.count(distinct(CampaignEvent.vin))).where(
        CampaignEvent.campaign_id == campaign_id, CampaignEvent.source == "car"
    )
    if states is not None:
        query = query.where(CampaignEvent.state.in_(states))
    return session.scalar(query) or 0


def _funnel(session: Session, campaign: Campaign, counts: dict[str, int]) -> list[FunnelStage]:
    in_campaign = CampaignVehicle.campaign_id == campaign.id
    notified = session.scalar(select(func.count()).where(in_campaign, CampaignVehicle.notified_at.is_not(None))) or 0
    return [
        FunnelStage(stage="population", label="In the recall", cars=campaign.population),
        FunnelStage(stage="notified", label="Notice sent", cars=notified),
        FunnelStage(stage="answered", label="Car answered", cars=_reached(session, campaign.id, _ANSWERED_OR_LATER)),
        FunnelStage(
            stage="downloading", label="Download started", cars=_reached(session, campaign.id, _DOWNLOADING_OR_LATER)
        ),
        FunnelStage(
            stage="installing", label="Install started", cars=_reached(session, campaign.id, _INSTALLING_OR_LATER)
        ),
        FunnelStage(stage="remedied", label="Remedied over the air", cars=counts.get(VinState.REMEDIED.value, 0)),
    ]


def _hardware_id(recall: Recall, release: Release) -> str:
    return Population.stored(recall.population).hardware_id or release.hardware_id


def _releases(session: Session, campaign: Campaign, recall: Recall, release: Release) -> list[Release]:
    """What the campaign installs: every release of a multi-ECU recall, else its one release."""
    releases = [] if campaign.kind == ROLLBACK else populations.releases_of(session, recall)
    return releases if len(releases) > 1 else [release]


def _hardware_ids(session: Session, campaign: Campaign, recall: Recall, release: Release) -> list[str]:
    """The ECU hardware the campaign updates: every release's of a multi-ECU recall."""
    releases = _releases(session, campaign, recall, release)
    if len(releases) > 1:
        return [r.hardware_id for r in releases]
    return [_hardware_id(recall, release)]


def _shares(
    session: Session, campaign_id: int, hardware_ids: Sequence[str], column: InstrumentedAttribute[str]
) -> dict[str, int]:
    """Cars of the campaign per value of ``column`` (a vehicle or ECU column)."""
    rows = session.execute(
        select(column, func.count(distinct(CampaignVehicle.vin)))
        .join(Vehicle, Vehicle.vin == CampaignVehicle.vin)
        .join(Ecu, (Ecu.vehicle_id == Vehicle.id) & Ecu.hardware_id.in_(hardware_ids))
        .where(CampaignVehicle.campaign_id == campaign_id)
        .group_by(column)
    )
    return {str(value): n for value, n in rows}


def _ranked(failures: dict[str, int], cars: dict[str, int]) -> list[Share]:
    shares = [Share(value=value, failures=n, cars=cars.get(value, n)) for value, n in failures.items()]
    return sorted(shares, key=lambda s: (-s.failures, s.value))


def words(code: str) -> str:
    """A failure reason code in plain words (the code itself when it has none)."""
    return plain_words(code) or code


def _failures(session: Session, campaign_id: int, hardware_ids: Sequence[str]) -> FailureBreakdown:
    """Failing cars by reason, model, ECU hardware and version; a car with several affected ECUs counts once
    per value (once per model, once for each of its ECUs' hardware), and under the ECU its failure names."""
    rows = session.execute(
        select(CampaignVehicle, Vehicle.model, Ecu.serial, Ecu.hardware_id, Ecu.installed_version)
        .join(Vehicle, Vehicle.vin == CampaignVehicle.vin)
        .join(Ecu, (Ecu.vehicle_id == Vehicle.id) & Ecu.hardware_id.in_(hardware_ids))
        .where(CampaignVehicle.campaign_id == campaign_id, CampaignVehicle.state.in_(_ERRORS))
        .order_by(CampaignVehicle.updated_at.desc(), CampaignVehicle.vin, Ecu.primary.desc(), Ecu.id)
    ).all()
    total = (
        session.scalar(
            select(func.count()).where(CampaignVehicle.campaign_id == campaign_id, CampaignVehicle.state.in_(_ERRORS))
        )
        or 0
    )
    if not total:
        return FailureBreakdown(
            total=0, groups=[], by_reason=[], by_model=[], by_hardware_id=[], by_software_version=[], recent=[]
        )
    grouped: dict[tuple[str, str, str, str, str], set[str]] = {}
    by: dict[str, dict[str, set[str]]] = {
        "reason": {},
        "model": {},
        "hardware_id": {},
        "software_version": {},
        "failed_ecu": {},
    }
    recent: dict[str, FailingCar] = {}
    for cv, model, serial, hardware_id, version in rows:
        reason = cv.reason or "unknown"
        grouped.setdefault((cv.state, reason, model, hardware_id, version), set()).add(cv.vin)
        for key, value in (
            ("reason", reason),
            ("model", model),
            ("hardware_id", hardware_id),
            ("software_version", version),
        ):
            by[key].setdefault(value, set()).add(cv.vin)
        named = progress_service.failing_ecu_named(cv.state, cv.failed_ecu, cv.detail, serial)
        if named:
            by["failed_ecu"].setdefault(hardware_id, set()).add(cv.vin)
        car = recent.setdefault(
            cv.vin,
            FailingCar(
                vin=cv.vin,
                state=cv.state,
                reason=reason,
                reason_text=words(reason),
                model=model,
                software_version=version,
                updated_at=cv.updated_at,
            ),
        )
        if named and car.failed_ecu is None:
            recent[cv.vin] = car.model_copy(update={"failed_ecu": serial, "software_version": version})
    groups = [
        FailureGroup(
            state=s, reason=r, reason_text=words(r), model=m, hardware_id=h, software_version=v, cars=len(vins)
        )
        for (s, r, m, h, v), vins in grouped.items()
    ]
    groups.sort(key=lambda g: (-g.cars, g.reason, g.model, g.software_version))
    counted = {key: {value: len(vins) for value, vins in values.items()} for key, values in by.items()}
    reason_cars = {reason: total for reason in counted["reason"]}  # the share of a reason is of all failures
    return FailureBreakdown(
        total=total,
        groups=groups,
        by_reason=[s.model_copy(update={"text": words(s.value)}) for s in _ranked(counted["reason"], reason_cars)],
        by_model=_ranked(counted["model"], _shares(session, campaign_id, hardware_ids, Vehicle.model)),
        by_hardware_id=_ranked(counted["hardware_id"], _shares(session, campaign_id, hardware_ids, Ecu.hardware_id)),
        by_software_version=_ranked(
            counted["software_version"], _shares(session, campaign_id, hardware_ids, Ecu.installed_version)
        ),
        by_failed_ecu=_ranked(counted["failed_ecu"], _shares(session, campaign_id, hardware_ids, Ecu.hardware_id)),
        recent=list(recent.values())[:RECENT_FAILURES],
    )


def _wave_spec(plan: RolloutPlan, index: int) -> str:
    if index >= len(plan.waves):
        return "rest"
    wave = plan.waves[index]
    return f"{wave.cars} cars" if wave.cars is not None else f"{wave.percent:g}%"


# Cars the scheduler has not sent a notice yet (a wave not open, the rate limit, a window, a planned start):
# waiting, not in progress.
_NOT_NOTIFIED = and_(CampaignVehicle.state == VinState.PENDING.value, CampaignVehicle.notified_at.is_(None))


def _in_progress(counts: Mapping[str, int], not_notified: int) -> int:
    """Cars notified and not final: answering, deferred, consented or installing."""
    return sum(counts.get(s.value, 0) for s in IN_FLIGHT) - not_notified


def dashboard(session: Session, campaign_id: int, now: datetime) -> Dashboard:
    campaign, recall, release = _campaign(session, campaign_id)
    progress = progress_service.progress(session, campaign_id, now)
    plan = shown_plan(recall, campaign) or RolloutPlan()  # unreadable: paused, its status_reason says why
    counts = progress.counts
    events = CampaignEvent.campaign_id == campaign_id
    not_notified = (
        session.scalar(select(func.count()).where(CampaignVehicle.campaign_id == campaign_id, _NOT_NOTIFIED)) or 0
    )
    first_success = session.execute(
        select(func.min(CampaignEvent.received_at))
        .where(events, CampaignEvent.state.in_(_SUCCESS))
        .group_by(CampaignEvent.vin)
    ).scalars()
    failure_times = session.scalars(select(CampaignEvent.received_at).where(events, CampaignEvent.state.in_(_ERRORS)))
    waves = [
        WaveView(
            number=w.number,
            spec=_wave_spec(plan, wave_index(w.number)),
            size=w.size,
            counts=w.counts,
            remedied=w.remedied,
            errors=w.errors,
            needed=w.needed,
            gate=w.gate,
            opened=w.opened,
            success_threshold_percent=plan.success_threshold_percent,
            error_threshold_count=plan.error_threshold_count,
            error_threshold_percent=plan.error_threshold_percent,
        )
        for w in progress.waves
    ]
    return Dashboard(
        campaign_id=campaign.id,
        recall_id=recall.id,
        recall_number=recall.campaign_number,
        title=recall.title,
        safety_recall=recall.safety_recall,
        kind=campaign.kind,
        parent_campaign_id=campaign.parent_campaign_id,
        rollback_campaign_id=progress.rollback_campaign_id,
        status=campaign.status,
        status_reason=campaign.status_reason,
        launched_at=campaign.launched_at,
        release_version=", ".join(r.version for r in _releases(session, campaign, recall, release)),
        hardware_id=", ".join(_hardware_ids(session, campaign, recall, release)),
        population=campaign.population,
        counts=counts,
        remedied=sum(counts.get(s, 0) for s in _SUCCESS),
        in_progress=_in_progress(counts, not_notified),
        not_notified=not_notified,
        errors=sum(counts.get(s, 0) for s in _ERRORS),
        notices_published=progress.notices_published,
        retries_scheduled=progress.retries_scheduled,
        done=progress.done,
        funnel=_funnel(session, campaign, counts),
        remedied_over_time=_cumulative(t for t in first_success if t is not None),
        failures_over_time=_cumulative(failure_times),
        waves=waves,
        current_wave=progress.current_wave,
        starts_at=progress.starts_at,
        scheduled=progress.scheduled,
        failures=_failures(session, campaign_id, _hardware_ids(session, campaign, recall, release)),
        generated_at=now,
    )


def summaries(session: Session, now: datetime) -> list[CampaignSummary]:
    """Every campaign with its headline numbers, newest first (one GROUP BY for all)."""
    per: dict[int, dict[str, int]] = {}
    for campaign_id, state, n in session.execute(
        select(CampaignVehicle.campaign_id, CampaignVehicle.state, func.count()).group_by(
            CampaignVehicle.campaign_id, CampaignVehicle.state
        )
    ):
        per.setdefault(campaign_id, {})[state] = n
    waiting = {
        campaign_id: n
        for campaign_id, n in session.execute(
            select(CampaignVehicle.campaign_id, func.count()).where(_NOT_NOTIFIED).group_by(CampaignVehicle.campaign_id)
        )
    }
    rows = session.execute(
        select(Campaign, Recall).join(Recall, Recall.id == Campaign.recall_id).order_by(Campaign.id.desc())
    ).all()
    out = []
    for campaign, recall in rows:
        counts = per.get(campaign.id, {})
        starts_at, scheduled = schedule(shown_plan(recall, campaign), campaign.status, now)
        out.append(
            CampaignSummary(
                id=campaign.id,
                recall_id=campaign.recall_id,
                recall_number=recall.campaign_number,
                title=recall.title,
                kind=campaign.kind,
                status=campaign.status,
                status_reason=campaign.status_reason,
                launched_at=campaign.launched_at,
                population=campaign.population,
                remedied=sum(counts.get(s, 0) for s in _SUCCESS),
                in_progress=_in_progress(counts, waiting.get(campaign.id, 0)),
                not_notified=waiting.get(campaign.id, 0),
                errors=sum(counts.get(s, 0) for s in _ERRORS),
                other=sum(counts.get(s, 0) for s in _OTHER),
                starts_at=starts_at,
                scheduled=scheduled,
            )
        )
    return out
