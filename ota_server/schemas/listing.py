"""The one list contract's bodies: a page of items with an opaque cursor, and the rows of a campaign's cars."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from ota_server.domain.states import VinState

Item = TypeVar("Item")

# Where a recall stands: not launched (no request waiting), awaiting a second person's approval,
# or its remedy campaign's status.
RecallStatus = Literal["not_launched", "awaiting_approval", "active", "paused", "cancelled", "completed"]


class Page(BaseModel, Generic[Item]):
    """One page of a list; pass ``next_cursor`` back as ``cursor`` (with the same sort) for the next one."""

    items: list[Item]
    next_cursor: str | None = Field(description="Opaque; null on the last page")


class CampaignEcuVersion(BaseModel):
    """One affected ECU of the car and what it runs, as the car last reported it (or as registered)."""

    serial: str
    hardware_id: str
    installed_version: str | None = Field(description="Null: the ECU is no longer registered on the car")
    source: Literal["reported", "declared"] = Field(
        description="reported: the car's last signed version manifest; declared: registration, no manifest yet"
    )
    reported_at: datetime | None


NextTryBasis = Literal["retry_schedule", "agent_recheck_estimate"]


class CampaignVehicleRow(BaseModel):
    """One car of a campaign: where it stands, why, and when it will be tried again."""

    vin: str
    model: str | None = Field(description="Null only if the car's registration was removed")
    model_year: int | None
    state: VinState
    wave: int = Field(ge=1, description="The wave the car belongs to, numbered from 1")
    reason: str | None = Field(
        description="The code: a failure reason, unreachable reason, timeout or (a deferred car) what holds it"
    )
    reason_text: str | None = Field(description="The reason code in plain words")
    detail: str | None = Field(default=None, description="The car's or operator's own words, as reported")
    attempts: int = Field(ge=0, description="Notices issued to the car in this campaign (0: not notified yet)")
    retries: int = Field(ge=0, description="Automatic or operator retries so far")
    next_try_at: datetime | None = Field(
        description="When a deferred or retrying car will be tried again; null otherwise"
    )
    next_try_basis: NextTryBasis | None = Field(
        description="retry_schedule: the server will send a new notice then; agent_recheck_estimate: a deferred "
        "car looks again by itself, this is its last report plus the agent's default recheck interval"
    )
    updated_at: datetime
    last_seen: datetime | None = Field(description="The car's last message of any kind")
    ecus: list[CampaignEcuVersion]
    link: str = Field(description="The car's page")


CampaignVehiclePage = Page[CampaignVehicleRow]
