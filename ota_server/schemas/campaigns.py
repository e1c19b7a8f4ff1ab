"""Campaigns, their progress, the operators' controls, outcomes and the owner-notification log."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
)

from ota_server.domain.states import UnreachableReason
from ota_server.schemas.common import INPUT_MODEL, OUTPUT_MODEL, OperatorOutcome, Text, Vin


class CampaignPublic(BaseModel):
    model_config = OUTPUT_MODEL
    id: int
    recall_id: int
    release_id: int
    population: int = Field(description="Cars in the campaign now (grows only in a dynamic campaign)")
    launched_at: datetime
    launch_population: int | None = Field(default=None, description="The count frozen at launch")
    status: str = Field(
        default="active",
        description="active, paused, cancelled or completed (every car final; a car moving again reopens it)",
    )
    status_reason: str | None = Field(
        default=None, description="Who or which gate paused or cancelled it, and why (or the error that paused it)"
    )
    current_wave: int = Field(
        default=1, ge=1, description="Number of the highest wave opened so far (waves are numbered from 1)"
    )
    starts_at: datetime | None = Field(
        default=None, description="The plan's start (rollout.start_at): no car is notified before it; null: at launch"
    )
    scheduled: bool = Field(
        default=False,
        description="Launched but not started: starts_at is still ahead, so no car is notified or in progress yet",
    )
    kind: str = Field(
        default="remedy", description="remedy (the recall's fix) or rollback (launched by a tripped error threshold)"
    )
    parent_campaign_id: int | None = Field(
        default=None, description="For a rollback campaign: the remedy campaign whose wave tripped"
    )


class WaveProgress(BaseModel):
    number: int = Field(ge=1, description="The wave's number, from 1 (the plan's first wave is 1)")
    size: int
    counts: dict[str, int] = Field(description="Cars of this wave per state (zeros left out)")
    remedied: int
    errors: int = Field(description="Failed, rolled back or timed out")
    needed: int = Field(description="Remedied cars the success threshold asks for")
    gate: str = Field(
        description="waiting, passed or tripped (errors crossed the threshold); missed: short of the success "
        "threshold with no car of the wave left to change (a later wave waits: the campaign is paused until an "
        "operator retries its failed cars or cancels); unknown: the stored plan is unreadable"
    )
    opened: bool = Field(description="The wave was opened (false for every wave of a campaign not started yet)")


class EcuProgress(BaseModel):
    """A campaign's affected ECUs of one hardware id, by their car's state.

    Under the recall's keep_successful policy a failed car may have some ECUs on the fix:
    ``on_fix`` counts the ECUs whose car's signed manifest shows their release.
    """

    hardware_id: str
    release_id: int = Field(description="The release these ECUs install")
    ecus: int = Field(description="Affected ECUs of this hardware id (one per car, or more)")
    counts: dict[str, int] = Field(description="These ECUs by their car's state; adds up to ecus")
    failed_here: int = Field(
        description="Failed, rolled-back or timed-out cars whose failure names one of these ECUs (the car's "
        "signed report's ecu_serial; an older agent's detail: 'ECU <serial>: ...')"
    )
    on_fix: int = Field(
        default=0, description="These ECUs whose car's signed version manifest shows their release installed"
    )


class Progress(BaseModel):
    """Counts per state always add up to ``population``."""

    campaign_id: int
    recall_number: str
    population: int
    counts: dict[str, int]
    failures_by_reason: dict[str, int] = Field(description="Failed, rolled-back and timed-out cars by reason")
    notices_published: int
    done: bool = Field(
        description="No car can change without an operator: nothing left to notify, nothing in flight, "
        "no retry scheduled or still owed by the plan"
    )
    status: str = "active"
    status_reason: str | None = None
    current_wave: int = Field(default=1, ge=1, description="Number of the highest wave opened so far (from 1)")
    starts_at: datetime | None = Field(default=None, description="The plan's start; null: at launch")
    scheduled: bool = Field(
        default=False, description="Not started: starts_at is still ahead; nothing is in progress and done is false"
    )
    waves: list[WaveProgress] = Field(default_factory=list)
    unreachable_by_reason: dict[str, int] = Field(default_factory=dict)
    retries_scheduled: int = Field(default=0, description="Cars waiting for a retry notice")
    kind: str = Field(default="remedy", description="remedy or rollback")
    rollback_campaign_id: int | None = Field(
        default=None,
        description="The rollback campaign launched from this one (by the error threshold or an operator), if any",
    )
    parent_campaign_id: int | None = Field(
        default=None, description="A rollback campaign: the remedy campaign it rolls back"
    )
    ecus: list[EcuProgress] = Field(
        default_factory=list, description="Per hardware id of the recall's releases: its ECUs by their car's state"
    )


class CampaignControl(BaseModel):
    model_config = INPUT_MODEL
    reason: Text = Field(default="", max_length=1000, description="Why (kept with the status and in the audit log)")


class RollbackStart(BaseModel):
    """An operator's rollback of a paused campaign: the plan's rollback release to its remedied cars."""

    model_config = INPUT_MODEL
    reach: Literal["wave", "campaign"] | None = Field(
        default=None,
        description="The open wave's remedied cars or every remedied car of the campaign; "
        "default: the recall's rollback_reach ('campaign' when that is 'none')",
    )
    reason: Text = Field(default="", max_length=1000, description="Why (kept with the status and in the audit log)")


class ControlResult(BaseModel):
    campaign: CampaignPublic
    vehicles: int = Field(description="Cars the action touched (withdrawn, retried...)")


class OutcomeCreate(BaseModel):
    """An operator's record for one car: fixed at a dealer, inspected and not needed, or unreachable."""

    model_config = INPUT_MODEL
    outcome: OperatorOutcome
    reason: UnreachableReason | None = Field(
        default=None, description="For unreachable: exported, stolen, scrapped, other"
    )
    evidence: Text = Field(
        min_length=1, max_length=5000, description="What shows it (repair order, inspection note...)"
    )
    reference: Text | None = Field(default=None, max_length=200, description="e.g. the dealer's repair order number")


class VinOutcome(BaseModel):
    campaign_id: int
    vin: str
    state: str
    reason: str | None
    detail: str | None
    recorded_by: str | None
    evidence_ref: str | None
    updated_at: datetime


class NoticeLogEntry(BaseModel):
    """One message the broker accepted for a car: a campaign notice or a withdrawal."""

    model_config = OUTPUT_MODEL
    campaign_id: int
    vin: str
    kind: str
    nonce: str
    payload: dict[str, Any]
    published_at: datetime


class OwnerLetterCreate(BaseModel):
    """Owner letters mailed (or e-mailed) for a recall: the first notification or a follow-up."""

    model_config = INPUT_MODEL
    vins: list[Vin] | Literal["all"] = Field(
        description="The cars whose owners got the letter, or 'all': every car of the recall's population"
    )
    sent_on: date = Field(description="The date the letters were mailed")
    letter: Literal["first", "follow_up"] = Field(description="The first notification or a follow-up")
    channel: Literal["letter", "email"] = "letter"
    text: str = Field(min_length=1, max_length=20_000, description="The letter's full text")


class OwnerLettersRecorded(BaseModel):
    recorded: int


class OwnerNotificationPublic(BaseModel):
    """One thing told to one car's owner: when, through which channel, the text (or only its sha256)."""

    model_config = OUTPUT_MODEL
    id: int
    recall_id: int
    campaign_id: int | None
    vin: str
    kind: str
    channel: str
    at: datetime
    text: str
    text_sha256: str
    detail: str
    recorded_by: str


class IngestStats(BaseModel):
    accepted: int
    duplicates: int
    rejected: dict[str, int]
    junk: int = Field(
        0,
        description="Messages that were not a car's genuine report (unsigned, forged, malformed, or cut "
        "by the junk budgets), by any reason; they never spend a car's own allowance",
    )
    manifests: int = Field(0, description="Version manifests accepted (a replayed one is rejected: manifest_replayed)")
    discrepancies: dict[str, int] = Field(
        default_factory=dict, description="Discrepancies found in manifests since the start, by kind"
    )
