"""Operators' webhooks: register (URL checked, secret made or given), list, remove, resume, and
each one's deliveries. Sending is :mod:`ota_server.services.webhook_delivery`; the events come
from :mod:`ota_server.events.outbox`.

A URL is refused (422, saying why) when it is not http or https, carries a user name or
password, has no host, or is longer than 2000 characters; a loopback or link-local host
(``localhost``, 127.0.0.0/8, ::1, 169.254.0.0/16, fe80::/10, 0.0.0.0) is refused unless the
server's ``webhook_allow_loopback`` setting allows it (the default, for development and tests;
a deployment sets ``OTA_WEBHOOK_ALLOW_LOOPBACK=false``). Names are judged as written: a DNS
name that resolves to such an address is not looked up.
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.db.models import OutboxEvent, Webhook, WebhookDelivery
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.schemas.listing import Page
from ota_server.schemas.webhooks import MAX_URL, DeliveryPublic, WebhookCreate, WebhookCreated, WebhookPublic
from ota_server.services import listing
from ota_server.services.listing import Listing

ACTIVE, PAUSED = "active", "paused"
WEBHOOKS = listing.by_id(
    "webhooks",
    Webhook.id,
    created_at=listing.column(Webhook.created_at, datetime),
    status=listing.column(Webhook.status, str),
    consecutive_failures=listing.column(Webhook.consecutive_failures, int),
)
_DELIVERY_ID = listing.column(WebhookDelivery.id, str)  # a uuid: unique, not an integer
DELIVERIES = Listing(
    "webhook-deliveries",
    {
        "created_at": listing.column(WebhookDelivery.created_at, datetime),
        "status": listing.column(WebhookDelivery.status, str),
        "attempts": listing.column(WebhookDelivery.attempts, int),
    },
    _DELIVERY_ID,
    "-created_at",
)


def check_url(url: str, *, allow_loopback: bool) -> str:
    """The URL as given, or InvalidInput saying what is wrong with it."""
    if len(url) > MAX_URL:
        raise InvalidInput(f"url: longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"url: the scheme must be http or https, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("url: no user name or password in the URL (the signature authenticates the server)")
    host = parts.hostname
    if not host:
        raise InvalidInput("url: no host")
    if port == 0:
        raise InvalidInput("url: port 0")
    if not allow_loopback and _loopback(host):
        raise InvalidInput(f"url: {host} is a loopback or link-local address, not allowed on this server")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local or address.is_unspecified


def _webhook(session: Session, webhook_id: int) -> Webhook:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None:
        raise NotFound(f"no webhook {webhook_id}")
    return webhook


def create(session: Session, body: WebhookCreate, actor: str, now: datetime, *, allow_loopback: bool) -> WebhookCreated:
    url = check_url(body.url, allow_loopback=allow_loopback)
    events = sorted(set(body.events)) if body.events is not None else None
    secret = body.secret if body.secret is not None else secrets.token_urlsafe(32)
    webhook = Webhook(
        url=url,
        events=events,
        secret=secret,
        status=ACTIVE,
        consecutive_failures=0,
        created_at=now,
        created_by=actor,
    )
    session.add(webhook)
    session.commit()
    return WebhookCreated.model_validate(webhook, from_attributes=True)


def page(session: Session, sort: str | None, cursor: str | None, limit: int) -> Page[WebhookPublic]:
    rows, next_cursor = listing.page(session, select(Webhook), WEBHOOKS, sort, cursor, limit)
    return Page[WebhookPublic](items=[WebhookPublic.model_validate(w) for w in rows], next_cursor=next_cursor)


def remove(session: Session, webhook_id: int) -> WebhookPublic:
    """The webhook and its deliveries (sent or not) are gone; its events stay for the other webhooks."""
    webhook = _webhook(session, webhook_id)
    gone = WebhookPublic.model_validate(webhook)
    session.delete(webhook)
    session.commit()
    return gone


def resume(session: Session, webhook_id: int) -> WebhookPublic:
    """Send to a paused webhook again: its pending deliveries are due now, its failure count starts over."""
    webhook = _webhook(session, webhook_id)
    if webhook.status != PAUSED:
        raise Conflict(f"webhook {webhook_id} is {webhook.status}, not paused")
    webhook.status, webhook.paused_reason = ACTIVE, None
    webhook.consecutive_failures, webhook.failing_since = 0, None
    session.commit()
    return WebhookPublic.model_validate(webhook)


def deliveries(
    session: Session, webhook_id: int, status: str | None, sort: str | None, cursor: str | None, limit: int
) -> Page[DeliveryPublic]:
    """The webhook's deliveries, newest first unless sorted otherwise, optionally of one status."""
    _webhook(session, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    rows, next_cursor = listing.page(session, query, DELIVERIES, sort, cursor, limit)
    events = {
        e.id: e for e in session.scalars(select(OutboxEvent).where(OutboxEvent.id.in_({d.event_id for d in rows})))
    }
    items = [
        DeliveryPublic(
            id=d.id,
            event_id=events[d.event_id].event_id,
            event_type=events[d.event_id].type,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
            last_attempt_at=d.last_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
        )
        for d in rows
    ]
    return Page[DeliveryPublic](items=items, next_cursor=next_cursor)
