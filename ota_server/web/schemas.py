"""Response models of the dashboard's JSON APIs (kept apart from ``ota_server.schemas``,
which is the operators' REST contract; these are views built for the pages)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from ota_server.schemas import DiscrepancyPublic, EcuPublic


class FunnelStage(BaseModel):
    stage: str = Field(description="population, notified, answered, downloading, installing or remedied")
    label: str
    cars: int = Field(description="Cars that reached at least this stage (from the event history)")


class SeriesPoint(BaseModel):
    at: datetime
    cars: int = Field(description="Cumulative count at this instant")


class WaveView(BaseModel):
    number: int = Field(ge=1, description="The wave's number, from 1")
    spec: str = Field(description="The plan's wave: e.g. '5 cars' or '100%'")
    size: int
    counts: dict[str, int]
    remedied: int
    errors: int
    needed: int = Field(description="Remedied cars the success threshold asks for")
    gate: str = Field(description="waiting, passed, tripped or missed (see WaveProgress.gate)")
    opened: bool
    success_threshold_percent: float
    error_threshold_count: int | None
    error_threshold_percent: float | None


class FailureGroup(BaseModel):
    """Failed, rolled-back or timed-out cars sharing a reason, model, ECU hardware and software version."""

    state: str
    reason: str
    reason_text: str = Field(description="The reason code in plain words")
    model: str
    hardware_id: str
    software_version: str = Field(description="The version the ECU ran before the update (as registered)")
    cars: int


class Share(BaseModel):
    value: str
    text: str | None = Field(default=None, description="A reason code's plain words (by_reason only)")
    failures: int
    cars: int = Field(description="Cars of the campaign with this value, failed or not")


class FailingCar(BaseModel):
    vin: str
    state: str
    reason: str
    reason_text: str = Field(description="The reason code in plain words")
    model: str
    software_version: str = Field(description="The failing ECU's version before the update (else the first ECU's)")
    updated_at: datetime
    failed_ecu: str | None = Field(
        default=None,
        description="The serial of the ECU the car's signed failure report names: its ecu_serial "
        "(an older agent's: the detail's 'ECU <serial>: ...')",
    )


class FailureBreakdown(BaseModel):
    total: int = Field(description="Cars now failed, rolled back or timed out")
    groups: list[FailureGroup]
    by_reason: list[Share]
    by_model: list[Share]
    by_hardware_id: list[Share]
    by_software_version: list[Share]
    by_failed_ecu: list[Share] = Field(
        default_factory=list, description="Failing cars by the hardware id of the ECU their failure names"
    )
    recent: list[FailingCar] = Field(description="The most recent failing cars (up to 25), for a drill-down")


class Dashboard(BaseModel):
    campaign_id: int
    recall_id: int
    recall_number: str
    title: str
    safety_recall: bool
    kind: str
    parent_campaign_id: int | None
    rollback_campaign_id: int | None
    status: str
    status_reason: str | None
    launched_at: datetime
    release_version: str
    hardware_id: str
    population: int
    counts: dict[str, int] = Field(description="Cars per state now (zeros included); adds up to population")
    remedied: int = Field(description="Remedied over the air, at a dealer, or inspected and not needed")
    in_progress: int = Field(description="Notified and not final: answering, deferred, consented or installing")
    not_notified: int = Field(
        description="Not sent a notice yet (a wave not open, the rate limit, a window, a planned start)"
    )
    errors: int
    notices_published: int
    retries_scheduled: int
    done: bool
    funnel: list[FunnelStage]
    remedied_over_time: list[SeriesPoint]
    failures_over_time: list[SeriesPoint]
    waves: list[WaveView]
    current_wave: int = Field(ge=1, description="Number of the highest wave opened so far (from 1)")
    starts_at: datetime | None = Field(description="The plan's start; null: at launch")
    scheduled: bool = Field(
        description="Not started yet (starts_at ahead): show 'starts at', not progress; no car is notified"
    )
    failures: FailureBreakdown
    generated_at: datetime


class CampaignSummary(BaseModel):
    id: int
    recall_id: int
    recall_number: str
    title: str
    kind: str
    status: str
    status_reason: str | None
    launched_at: datetime
    population: int
    remedied: int
    in_progress: int = Field(description="Notified and not final: answering, deferred, consented or installing")
    not_notified: int = Field(
        description="Not sent a notice yet (a wave not open, the rate limit, a window, a planned start)"
    )
    errors: int
    other: int = Field(description="Settled without the software: unreachable, declined, withdrawn")
    starts_at: datetime | None = Field(description="The plan's start; null: at launch")
    scheduled: bool = Field(description="Not started yet (starts_at ahead): no car is notified or in progress")


class TimelineEntry(BaseModel):
    at: datetime
    campaign_id: int | None = Field(description="None for the car's version manifests and discrepancies")
    recall_number: str | None
    kind: Literal[
        "manifest",
        "discrepancy",
        "notice",
        "withdrawal",
        "report",
        "deferral",
        "failure",
        "remedied",
        "declined",
        "operator",
        "timeout",
        "retry",
        "cancel",
        "owner_notification",
    ]
    state: str | None = Field(description="The car's state this entry records (None for a notice sent)")
    attempt: int | None
    reason: str | None
    detail: str | None
    source: str = Field(
        description="car, operator, timeout, cancel, retry, manifest (a campaign move the car's manifest made), "
        "or server (a notice)"
    )
    summary: str = Field(description="The entry in plain words")


class CampaignOfVin(BaseModel):
    campaign_id: int
    recall_id: int
    recall_number: str
    title: str
    safety_recall: bool
    kind: str
    campaign_status: str
    campaign_scheduled: bool = Field(default=False, description="The campaign waits for its start (starts_at)")
    starts_at: datetime | None = Field(default=None, description="The campaign's planned start (None: at launch)")
    state: str
    reason: str | None = Field(description="The code: a failure, unreachable or (a deferred car) deferral reason")
    reason_text: str | None = Field(default=None, description="The reason code in plain words")
    detail: str | None
    attempt: int
    retries: int
    next_retry_at: datetime | None
    wave: int = Field(ge=1, description="The car's wave, numbered from 1")
    updated_at: datetime
    recorded_by: str | None
    evidence_ref: str | None
    next_step: str
    action: Literal["none", "wait", "dealer"] = Field(
        description="none: nothing to do; wait: the car or the server will move it on; dealer: book a visit"
    )


class VehicleTimeline(BaseModel):
    vin: str
    make: str | None
    model: str
    model_year: int
    online: bool
    last_seen: datetime | None
    ecus: list[EcuPublic]
    discrepancies: list[DiscrepancyPublic] = Field(
        default_factory=list, description="Where the car's manifests and the record disagree, newest first"
    )
    campaigns: list[CampaignOfVin]
    entries: list[TimelineEntry] = Field(description="Every notice and step across campaigns, oldest first")
    next_step: str = Field(description="What to tell the owner now, in plain words")
    action: Literal["none", "wait", "dealer"]


OwnerStatus = Literal["remedied", "remedied_at_dealer", "not_needed", "not_remedied", "remedy_not_yet_available"]


class PublicContact(BaseModel):
    name: str
    role: str
    phone: str
    email: str


class PublicRecall(BaseModel):
    """What an owner may see of one recall affecting their car (as a regulator's recall site shows)."""

    recall_number: str
    title: str
    safety_recall: bool
    summary: str = Field(description="The defect")
    safety_risk: str
    remedy: str
    status: OwnerStatus
    status_text: str = Field(description="e.g. 'Fixed' or 'Not fixed yet'")
    fixed: bool
    remedied_on: date | None
    what_happened: str = Field(description="What happened to this car, in plain words (said once)")
    what_to_do: str
    contact: PublicContact | None = Field(description="The person owners call about this recall")
    expected_minutes: int | None = None
    unavailable_functions: list[str] = Field(default_factory=list)


class PublicLookup(BaseModel):
    vin: str
    lang: str = Field(description="The language of the texts (Accept-Language or ?lang=): en or it")
    known: bool = Field(description="False: no record of this VIN, which is not the same as 'no recall'")
    make: str
    model: str
    model_year: int | None
    manufacturer: str
    checked_at: datetime
    open_recalls: int = Field(description="Recalls affecting this VIN that are not fixed yet")
    recalls: list[PublicRecall]
    message: str
    coverage: str = Field(description="What the check covers")
    dealer_locator_url: str


class WhoAmI(BaseModel):
    name: str
    role: str
