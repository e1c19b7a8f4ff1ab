"""Rolling back: a tripped wave's remedied cars get the plan's rollback release in a campaign of its own.

How far it reaches is the plan's ``rollback_reach``: the tripped wave's remedied cars
(``wave``), every remedied car of the campaign (``campaign``: the earlier waves run the bad
release too), or none. An operator may start it by hand for a paused campaign.

Same transaction as the pause that tripped it; at most one rollback campaign per campaign.
It belongs to the same recall, was approved with it, and runs the default plan (one wave of
every car, no thresholds, no further rollback): the scheduler notifies its cars and signs
their Director metadata like any campaign's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import Campaign, CampaignVehicle, Vehicle
from ota_server.domain.rollout_plan import RollbackReach
from ota_server.domain.states import CampaignKind, CampaignStatus, VinState
from ota_server.domain.waves import wave_number
from ota_server.rollout import transitions


def rollback_of(session: Session, campaign_id: int) -> Campaign | None:
    """The rollback campaign ``campaign_id`` launched, if any."""
    return session.scalar(select(Campaign).where(Campaign.parent_campaign_id == campaign_id))


def launch_rollback(
    session: Session, parent: Campaign, release_id: int, vins: Sequence[str], now: datetime
) -> Campaign:
    """Create (not commit) the rollback campaign of ``parent``: ``release_id`` to ``vins``, one wave."""
    campaign = Campaign(
        recall_id=parent.recall_id,
        release_id=release_id,
        population=len(vins),
        launch_population=len(vins),
        launched_at=now,
        status=CampaignStatus.ACTIVE,
        status_reason=f"rollback of campaign {parent.id} (wave {wave_number(parent.current_wave)})",
        current_wave=0,
        error_baseline=0,
        status_changed_at=now,
        kind=CampaignKind.ROLLBACK,
        parent_campaign_id=parent.id,
    )
    session.add(campaign)
    session.flush()
    transitions.enroll(
        session,
        [
            {
                "campaign_id": campaign.id,
                "vin": vin,
                "nonce": transitions.new_nonce(),
                "state": VinState.PENDING.value,
                "attempt": 0,
                "updated_at": now,
                "wave": 0,
            }
            for vin in vins
        ],
    )
    return campaign


def roll_back(
    session: Session, campaign: Campaign, release_id: int, now: datetime, reach: RollbackReach = "wave"
) -> Campaign | None:
    """Send ``release_id`` to the remedied cars ``reach`` names (they run the bad release): the open
    wave's (``wave``) or every opened wave's (``campaign``); ``none`` launches nothing.

    Says what happened in the campaign's status reason; returns the rollback campaign launched.
    """
    if reach == "none":
        campaign.status_reason = (
            f"{campaign.status_reason}; the recall's rollback_reach is none, so no rollback campaign was launched"
        )
        return None
    existing = rollback_of(session, campaign.id)
    if existing is not None:
        campaign.status_reason = f"{campaign.status_reason}; rollback campaign {existing.id} was launched already"
        return None
    vins = list(
        session.scalars(
            select(CampaignVehicle.vin)
            .join(Vehicle, Vehicle.vin == CampaignVehicle.vin)
            .where(
                CampaignVehicle.campaign_id == campaign.id,
                CampaignVehicle.wave == campaign.current_wave
                if reach == "wave"
                else CampaignVehicle.wave <= campaign.current_wave,
                CampaignVehicle.state == VinState.REMEDIED.value,
                Vehicle.decommissioned_at.is_(None),  # out of the fleet: no new campaign takes it
            )
            .order_by(CampaignVehicle.vin)
        )
    )
    where = f"wave {wave_number(campaign.current_wave)}" if reach == "wave" else "the campaign"
    if not vins:
        campaign.status_reason = (
            f"{campaign.status_reason}; no car of {where} is remedied, so no rollback campaign was launched"
        )
        return None
    child = launch_rollback(session, campaign, release_id, vins, now)
    if reach == "campaign":
        child.status_reason = (
            f"rollback of campaign {campaign.id} (every remedied car, waves 1 to {wave_number(campaign.current_wave)})"
        )
    campaign.status_reason = (
        f"{campaign.status_reason}; rollback campaign {child.id} launched to the {len(vins)} remedied cars of {where}"
    )
    return child
