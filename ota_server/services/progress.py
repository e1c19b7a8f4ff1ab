"""Campaign progress: one count per state, always summing to the campaign's population.

Also per wave (size, counts, the gate's verdict), failures by reason (failed, rolled
back, timed out) and unreachable cars by reason, for operators and regulator reports.
``done`` means no car can change any more without an operator: a failed car whose retry
the plan still owes is not final even before the scheduler has scheduled it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, CampaignEcu, CampaignVehicle, Ecu, Recall, Release, Vehicle
from ota_server.domain import rollout_plan as rules
from ota_server.domain.states import ERRORS, IN_FLIGHT, VinState
from ota_server.domain.waves import wave_number
from ota_server.errors import NotFound
from ota_server.rollout.campaign_tick import can_still_change
from ota_server.schemas import EcuProgress, Progress, WaveProgress
from ota_server.services.campaign_view import schedule, shown_plan
from ota_server.services.campaigns import CANCELLED, rollback_of

STATES = tuple(state.value for state in VinState)
MISSED = "missed"  # a wave short of its success threshold none of whose cars can change any more


def progress(session: Session, campaign_id: int, now: datetime, *, ecus: bool = True) -> Progress:
    """``now``: whether a scheduled campaign has started yet. ``ecus`` False leaves the per-ECU
    breakdown out (an empty list): its joins over the campaign's ECUs, cars and the fleet's
    reported versions are most of progress's cost, which a poller reading only the counts
    (``ota-bench`` twice a second for the whole run) need not pay (issue 19)."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None  # foreign key
    plan = shown_plan(recall, campaign)  # None: unreadable (the scheduler paused it), still shown
    in_campaign = CampaignVehicle.campaign_id == campaign_id
    # One pass over the campaign's cars gives the counts, the waves with a car that may still move,
    # the notices published and the retries waiting, all as of the same moment (one statement, one
    # snapshot): a report stored meanwhile can never make ``done`` disagree with the counts. Four
    # scans of the campaign per poll before (issue 19: a dashboard polls this for the whole run).
    counts = dict.fromkeys(STATES, 0)
    per_wave: dict[int, dict[str, int]] = {}
    changing: set[int] = set()
    published = retries = 0
    for wave, state, n, moving, sent, waiting in session.execute(
        select(
            CampaignVehicle.wave,
            CampaignVehicle.state,
            func.count(),
            func.count().filter(can_still_change(plan)),
            func.count().filter(CampaignVehicle.notice_published_at.is_not(None)),
            func.count().filter(CampaignVehicle.next_retry_at.is_not(None)),
        )
        .where(in_campaign)
        .group_by(CampaignVehicle.wave, CampaignVehicle.state)
    ):
        counts[state] = counts.get(state, 0) + n
        per_wave.setdefault(wave, {})[state] = n
        if moving:
            changing.add(wave)
        published += sent
        retries += waiting
    by_reason = select(CampaignVehicle.reason, func.count()).where(in_campaign).group_by(CampaignVehicle.reason)
    failures = {
        reason or "unknown": n
        for reason, n in session.execute(by_reason.where(CampaignVehicle.state.in_([s.value for s in ERRORS])))
    }
    unreachable = {
        reason or "other": n
        for reason, n in session.execute(by_reason.where(CampaignVehicle.state == VinState.UNREACHABLE.value))
    }
    # cancelled: no retry is ever issued again, only cars installing still report
    done = sum(counts[s.value] for s in IN_FLIGHT) == 0 if campaign.status == CANCELLED else not changing
    starts_at, scheduled = schedule(plan, campaign.status, now)
    waves = []
    for index in sorted(per_wave):
        gate = rules.gate(
            plan or rules.RolloutPlan(),
            per_wave[index],
            campaign.error_baseline if index == campaign.current_wave else 0,
        )
        waves.append(
            WaveProgress(
                number=wave_number(index),
                size=gate.size,
                counts=per_wave[index],
                remedied=gate.remedied,
                errors=gate.errors,
                needed=gate.needed,
                gate=_verdict(gate, index not in changing) if plan is not None else "unknown",
                opened=index <= campaign.current_wave and not scheduled,
            )
        )
    return Progress(
        campaign_id=campaign.id,
        recall_number=recall.campaign_number,
        population=campaign.population,
        counts=counts,
        failures_by_reason=failures,
        notices_published=published,
        done=done,
        status=campaign.status,
        status_reason=campaign.status_reason,
        current_wave=wave_number(campaign.current_wave),
        starts_at=starts_at,
        scheduled=scheduled,
        waves=waves,
        unreachable_by_reason=unreachable,
        retries_scheduled=retries,
        kind=campaign.kind,
        rollback_campaign_id=rollback.id if (rollback := rollback_of(session, campaign.id)) else None,
        parent_campaign_id=campaign.parent_campaign_id,
        ecus=ecu_progress(session, campaign_id) if ecus else [],
    )


def ecu_progress(session: Session, campaign_id: int) -> list[EcuProgress]:
    """The campaign's affected ECUs per hardware id, by their car's state, and the failures naming them.

    A car installs its ECUs together and rolls them all back together, so an ECU's state is
    its car's; which ECU made a car fail is what the car's signed failure report names.
    """
    rows = session.execute(
        select(CampaignEcu.hardware_id, CampaignEcu.release_id, CampaignVehicle.state, func.count())
        .join(
            CampaignVehicle,
            (CampaignVehicle.campaign_id == CampaignEcu.campaign_id) & (CampaignVehicle.vin == CampaignEcu.vin),
        )
        .where(CampaignEcu.campaign_id == campaign_id)
        .group_by(CampaignEcu.hardware_id, CampaignEcu.release_id, CampaignVehicle.state)
    ).all()
    if not rows:
        return []
    failed_here: dict[str, set[str]] = {}
    for hardware_id, vin, serial, state, failed_ecu, detail in session.execute(
        select(
            CampaignEcu.hardware_id,
            CampaignEcu.vin,
            CampaignEcu.ecu_serial,
            CampaignVehicle.state,
            CampaignVehicle.failed_ecu,
            CampaignVehicle.detail,
        )
        .join(
            CampaignVehicle,
            (CampaignVehicle.campaign_id == CampaignEcu.campaign_id) & (CampaignVehicle.vin == CampaignEcu.vin),
        )
        .where(CampaignEcu.campaign_id == campaign_id, CampaignVehicle.state.in_([s.value for s in ERRORS]))
    ):
        if failing_ecu_named(state, failed_ecu, detail, serial):
            failed_here.setdefault(hardware_id, set()).add(vin)
    on_fix: dict[int, int] = {}
    for release_id, n in session.execute(
        select(CampaignEcu.release_id, func.count())
        .join(Vehicle, Vehicle.vin == CampaignEcu.vin)
        .join(Ecu, (Ecu.vehicle_id == Vehicle.id) & (Ecu.serial == CampaignEcu.ecu_serial))
        .join(Release, Release.id == CampaignEcu.release_id)
        .where(
            CampaignEcu.campaign_id == campaign_id,
            Ecu.reported_at.is_not(None),
            Ecu.installed_version == Release.version,
            or_(
                Release.image_sha256.is_(None),
                Ecu.installed_sha256.is_(None),
                Ecu.installed_sha256 == Release.image_sha256,
            ),
        )
        .group_by(CampaignEcu.release_id)
    ):
        on_fix[release_id] = n
    out: dict[tuple[str, int], EcuProgress] = {}
    for hardware_id, release_id, state, n in rows:
        entry = out.setdefault(
            (hardware_id, release_id),
            EcuProgress(
                hardware_id=hardware_id,
                release_id=release_id,
                ecus=0,
                counts=dict.fromkeys(STATES, 0),
                failed_here=len(failed_here.get(hardware_id, ())),
                on_fix=on_fix.get(release_id, 0),
            ),
        )
        entry.ecus += n
        entry.counts[state] = entry.counts.get(state, 0) + n
    return sorted(out.values(), key=lambda e: e.hardware_id)


def failing_ecu_named(state: str, failed_ecu: str | None, detail: str | None, serial: str) -> bool:
    """Whether a car's failure names ECU ``serial`` as the failing one.

    The failure report's ``ecu_serial`` (kept as ``failed_ecu`` for a failed or rolled-back
    car) says it; an older agent's report left it unset, and its detail names the ECU as
    'ECU <serial>: ...' (a timed-out car's detail is the server's own and names none).
    """
    if failed_ecu is not None and state in (VinState.FAILED.value, VinState.ROLLED_BACK.value):
        return failed_ecu == serial
    return detail is not None and f"ECU {serial}:" in detail


def _verdict(gate: rules.Gate, settled: bool) -> str:
    """The gate's word for people: a wave still short of its success threshold when no car of that wave
    can change any more (``settled``) waits for nothing: it ``missed`` the threshold. Judged per wave, so
    a missed canary says so while the later waves wait behind it (the scheduler pauses the campaign)."""
    if settled and gate.status is rules.GateStatus.WAITING:
        return MISSED
    return gate.status.value
