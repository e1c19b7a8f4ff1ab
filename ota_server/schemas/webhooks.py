"""Webhooks: an operator's receiver of server events, and its deliveries (``docs/webhooks.md``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ota_server.schemas.common import Text
from ota_server.schemas.listing import Page

EventType = Literal[
    "campaign.launched",
    "campaign.paused",
    "campaign.threshold_tripped",
    "campaign.resumed",
    "campaign.cancelled",
    "campaign.completed",
    "approval.requested",
    "vehicle.failed",
    "discrepancy.found",
    "report.ready",
]
WebhookStatus = Literal["active", "paused"]
DeliveryStatus = Literal["pending", "delivered", "failed"]
MAX_URL = 2000


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Text = Field(
        min_length=1,
        max_length=MAX_URL,
        description="http or https, no user name or password in it; loopback only where the server allows it",
    )
    events: list[EventType] | None = Field(
        default=None, min_length=1, max_length=10, description="The event types to send; null or absent: every type"
    )
    secret: Text | None = Field(
        default=None,
        min_length=16,
        max_length=128,
        description="The HMAC-SHA256 key of the signatures; absent: the server makes one (shown once)",
    )


class WebhookPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    url: str
    events: list[EventType] | None = Field(description="null: every event type")
    status: WebhookStatus = Field(description="paused: a dead endpoint (or paused by hand); resume it to send again")
    paused_reason: str | None
    consecutive_failures: int = Field(ge=0)
    failing_since: datetime | None = Field(description="First failure of the current run of failures")
    created_at: datetime
    created_by: str


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="Shown only in this answer: keep it to check the X-OTA-Signature header")


class DeliveryPublic(BaseModel):
    id: str = Field(description="The X-OTA-Delivery header: the same on every attempt")
    event_id: str
    event_type: EventType
    status: DeliveryStatus
    attempts: int = Field(ge=0)
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next")
    last_attempt_at: datetime | None
    last_status_code: int | None = Field(description="The receiver's HTTP status at the last attempt")
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


WebhookPage = Page[WebhookPublic]
DeliveryPage = Page[DeliveryPublic]
