"""Webhooks: operators register receivers of server events (docs/webhooks.md) and watch their deliveries."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, status

from ota_server.api.auth import OperatorSession, actor_of, needs_operator, trail_of
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.api.openapi import errors
from ota_server.schemas.webhooks import (
    DeliveryPage,
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookPage,
    WebhookPublic,
)
from ota_server.services import webhooks

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_webhook(body: WebhookCreate, session: OperatorSession, runtime: RuntimeDep) -> WebhookCreated:
    """Register a receiver. The answer holds the secret, shown this once: every delivery is signed with it
    (X-OTA-Signature). Only events that happen from now on are sent."""
    allow = runtime.settings.webhook_allow_loopback
    # The audit keeps the host only: a receiver's URL may carry its own secret in the path or query.
    trail_of(session).action.target["host"] = (
        urlsplit(webhooks.check_url(body.url, allow_loopback=allow)).hostname or ""
    )
    return webhooks.create(session, body, actor_of(session).name, runtime.clock(), allow_loopback=allow)


@router.get("", dependencies=[needs_operator], responses={**CSV_RESPONSES, **errors(403)})
@exportable("webhooks.csv")
def list_webhooks(
    session: SessionDep,
    sort: Annotated[str | None, sort_query(webhooks.WEBHOOKS)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> WebhookPage:
    """The webhooks (without their secrets), oldest first unless sorted otherwise, with their status."""
    return webhooks.page(session, sort, cursor, limit)


@router.delete("/{webhook_id}", responses=errors(404))
def delete_webhook(webhook_id: Id, session: OperatorSession) -> WebhookPublic:
    """Remove a webhook and its deliveries; nothing more is sent to it."""
    return webhooks.remove(session, webhook_id)


@router.post("/{webhook_id}/resume", responses=errors(404, 409))
def resume_webhook(webhook_id: Id, session: OperatorSession) -> WebhookPublic:
    """Send to a paused (dead) webhook again: its waiting deliveries go out at the next run."""
    return webhooks.resume(session, webhook_id)


@router.get("/{webhook_id}/deliveries", dependencies=[needs_operator], responses={**CSV_RESPONSES, **errors(403, 404)})
@exportable("webhook-{webhook_id}-deliveries.csv")
def list_deliveries(
    webhook_id: Id,
    session: SessionDep,
    delivery_status: Annotated[DeliveryStatus | None, Query(alias="status", description="Only this status")] = None,
    sort: Annotated[str | None, sort_query(webhooks.DELIVERIES)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> DeliveryPage:
    """The webhook's deliveries, newest first unless sorted otherwise: status, attempts, next try, the
    receiver's last answer."""
    return webhooks.deliveries(session, webhook_id, delivery_status, sort, cursor, limit)
