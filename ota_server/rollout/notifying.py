"""Notifying: which cars of a campaign get their notice now, and the notices.

The open waves' cars not notified yet, and those whose retry is due, in wave and VIN order,
as many as the tick's cap and the plan's rate allow, each only inside its local maintenance
windows and only if no other campaign holds it (one active update per car; a safety recall
goes first). Their Director metadata is queued or signed and their notices made by the fleet
(:class:`ota_server.rollout.fleet.Fleet`), a large batch's in a thread while its chains are
written and its cars marked; the coordinator dispatches them once the tick commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, exists, func, select, union_all
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, CampaignVehicle, Recall, Vehicle
from ota_server.db.one_of import one_of
from ota_server.domain import rollout_plan as rules
from ota_server.domain.states import ERRORS, INSTALLING, NOT_STARTED, CampaignStatus, VinState
from ota_server.rollout import transitions
from ota_server.rollout.fleet import Fleet, Sendable

_CHUNK = 500
MAKE_ALONGSIDE = 1000  # cars notified at once from which their notices are made in a thread of their own
_CANDIDATE_PAGE = 1000  # cars read per query while choosing whom to release


@dataclass
class Notified:
    """What one campaign's notifying did."""

    messages: list[Sendable] = field(default_factory=list)
    first: int = 0  # cars notified for the first time
    retried: int = 0  # cars given a new notice after a failure or a timeout


class Notifier:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def _contenders(self, session: Session, campaign: Campaign) -> list[int]:
        """Other campaigns, not cancelled, with a car not settled yet: only they can hold a car."""
        in_flight = [s.value for s in NOT_STARTED | INSTALLING]
        return list(
            session.scalars(
                select(Campaign.id).where(
                    Campaign.id != campaign.id,
                    Campaign.status != CampaignStatus.CANCELLED,
                    exists().where(CampaignVehicle.campaign_id == Campaign.id, CampaignVehicle.state.in_(in_flight)),
                )
            )
        )

    def _busy(self, session: Session, recall: Recall, contenders: Sequence[int], vins: Sequence[str]) -> set[str]:
        """Cars another campaign holds: one active update per car; a safety recall goes first."""
        busy: set[str] = set()
        if not contenders or not vins:
            return busy
        in_flight = [s.value for s in NOT_STARTED | INSTALLING]
        installing_states = {s.value for s in INSTALLING}
        for start in range(0, len(vins), _CHUNK):
            rows = session.execute(
                select(CampaignVehicle.vin, CampaignVehicle.state, CampaignVehicle.notified_at, Recall.safety_recall)
                .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
                .join(Recall, Recall.id == Campaign.recall_id)
                .where(
                    one_of(CampaignVehicle.vin, vins[start : start + _CHUNK]),
                    CampaignVehicle.campaign_id.in_(contenders),
                    CampaignVehicle.state.in_(in_flight),
                    Campaign.status != CampaignStatus.CANCELLED,
                )
            )
            for vin, state, notified_at, other_safety in rows:
                installing = state in installing_states
                # A safety recall waits only for an install under way; a feature update also for
                # any notified campaign and for the car's unfinished safety recall.
                if (
                    installing
                    or (not recall.safety_recall and (notified_at is not None or other_safety))
                    or (notified_at is not None and other_safety)
                ):
                    busy.add(vin)
        return busy

    def release(
        self, session: Session, campaign: Campaign, recall: Recall, plan: rules.RolloutPlan, now: datetime, limit: int
    ) -> Notified:
        """Notify up to ``limit`` cars of the open waves: first notices and retries that are due."""
        notified = Notified()
        in_campaign = CampaignVehicle.campaign_id == campaign.id
        if plan.rate is not None:
            budget = rules.allowance(
                plan.rate,
                session.scalar(select(func.count()).where(in_campaign, CampaignVehicle.notified_at.is_not(None))) or 0,
                session.scalar(
                    select(func.count()).where(in_campaign, CampaignVehicle.notified_at > now - timedelta(minutes=1))
                )
                or 0,
            )
            if budget is not None:
                limit = min(budget, limit)
        if limit <= 0:
            return notified
        contenders = self._contenders(session, campaign)
        zones: dict[str, ZoneInfo] = {}
        chosen: list[tuple[str, str, str]] = []  # (vin, state, nonce)
        # Page through the candidates until ``limit`` are chosen: a tick of a 30,000-car launch
        # reads about one batch, not every car still waiting (which made each tick O(fleet)).
        # Without windows or other campaigns holding cars, every candidate is ready: read no more.
        page = limit if not plan.windows and not contenders else max(2 * limit, _CANDIDATE_PAGE)
        offset = 0
        while len(chosen) < limit:
            rows = session.execute(candidate_page(campaign, now, offset, page)).all()
            offset += len(rows)
            ready: list[tuple[str, str, str]] = []
            for vin, state, nonce, tz_name in rows:
                if plan.windows:
                    name = tz_name or plan.default_time_zone
                    tz = zones.get(name) or zones.setdefault(name, rules.zone(name))
                    if not rules.in_window(plan.windows, now, tz):
                        continue
                ready.append((vin, state, nonce))
            busy = self._busy(session, recall, contenders, [vin for vin, _, _ in ready])
            chosen += [car for car in ready if car[0] not in busy][: limit - len(chosen)]
            if len(rows) < page:
                break
        if not chosen:
            return notified
        write_chains = self._fleet.assign(session, campaign, recall, [vin for vin, _, _ in chosen], now)
        fresh = [vin for vin, state, _ in chosen if state == VinState.PENDING.value]
        nonces = {vin: nonce for vin, _, nonce in chosen}
        retried = [vin for vin, state, _ in chosen if state != VinState.PENDING.value]
        for start in range(0, len(retried), _CHUNK):  # a retry: a new notice with a new nonce
            for cv in session.scalars(
                select(CampaignVehicle).where(in_campaign, one_of(CampaignVehicle.vin, retried[start : start + _CHUNK]))
            ):
                nonces[cv.vin] = transitions.retry(session, cv, now)
        notified.retried = len(retried)
        notified.first = len(fresh)
        make = self._fleet.notice_maker(recall, campaign, [(vin, nonces[vin]) for vin, _, _ in chosen], now)
        if len(chosen) < MAKE_ALONGSIDE:
            write_chains()
            transitions.mark_notified(session, campaign.id, fresh, now)
            notified.messages = make()
            return notified
        # A launch's batch: its notices are made while PostgreSQL writes its chains and marks its cars
        # (~0.9 s of 30,000 cars, the tick's thread mostly waiting), not after; published only once the
        # tick commits.
        with ThreadPoolExecutor(1, thread_name_prefix="ota-notices") as alongside:
            made = alongside.submit(make)
            write_chains()
            transitions.mark_notified(session, campaign.id, fresh, now)
            notified.messages = made.result()
        return notified


def candidate_page(campaign: Campaign, now: datetime, offset: int, page: int) -> Select[str, str, str, str | None]:
    """Cars ``offset`` to ``offset + page`` of the open waves that may be notified now, in wave and VIN
    order: those never notified and those whose retry is due, with their time zone (plain rows).

    Two reads merged, not one with an OR: the cars waiting for a first notice come from the head
    of their own partial index (``ix_campaign_vehicles_waiting``, in this order), the due retries
    (few) from the state index; with the OR PostgreSQL read and sorted the whole campaign for
    every page of every tick (issue 19). The join for the time zone is on the page's cars only.
    """
    in_campaign = and_(CampaignVehicle.campaign_id == campaign.id, CampaignVehicle.wave <= campaign.current_wave)
    columns = (CampaignVehicle.vin, CampaignVehicle.state, CampaignVehicle.nonce, CampaignVehicle.wave)
    order = (CampaignVehicle.wave, CampaignVehicle.vin)
    waiting = (
        select(*columns)
        .where(in_campaign, CampaignVehicle.state == VinState.PENDING.value, CampaignVehicle.notified_at.is_(None))
        .order_by(*order)
        .limit(offset + page)
        .subquery("waiting")
    )
    due = (
        select(*columns)
        .where(
            in_campaign,
            CampaignVehicle.state.in_([s.value for s in ERRORS]),
            CampaignVehicle.next_retry_at <= now,
        )
        .order_by(*order)
        .limit(offset + page)
        .subquery("due")
    )
    both = union_all(select(waiting), select(due)).subquery("candidates")
    return (
        select(both.c.vin, both.c.state, both.c.nonce, Vehicle.time_zone)
        .join(Vehicle, Vehicle.vin == both.c.vin)
        .order_by(both.c.wave, both.c.vin)
        .offset(offset)
        .limit(page)
    )
