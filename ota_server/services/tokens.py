"""API tokens: random secrets shown once, stored as their sha256, each naming a person and a role.

A token has 256 bits of entropy, so a plain sha256 is enough to keep the stored
form useless to a reader of the database (no slow hash needed, unlike passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from datetime import datetime
from pathlib import Path

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ota_server.db.models import ApiToken
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.roles import Actor, Role, person_key
from ota_server.schemas import TokenCreated, TokenPublic
from ota_server.schemas.listing import Page
from ota_server.services import listing

log = logging.getLogger(__name__)

PREFIX = "ota_"
BOOTSTRAP_NAME = "admin"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _public(token: ApiToken) -> TokenPublic:
    return TokenPublic(
        id=token.id,
        name=token.name,
        role=Role(token.role),
        prefix=token.prefix,
        created_by=token.created_by,
        created_by_token=token.created_by_token_id,
        created_at=token.created_at,
        revoked_at=token.revoked_at,
    )


def create(session: Session, name: str, role: Role, *, created_by: str | Actor, now: datetime) -> TokenCreated:
    """Store a new token and return it with its secret (the only time the secret is seen).

    ``created_by`` is the token holder who asks (an :class:`Actor`), recorded with its token
    id so the two-person rule can follow who created whom; a plain string names a creator
    that holds no token (the server's first start, a local command).
    """
    if not NAME.match(name):
        raise InvalidInput(f"token name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-' (the person's name)")
    secret = PREFIX + secrets.token_urlsafe(32)
    creator = created_by if isinstance(created_by, Actor) else None
    token = ApiToken(
        name=name,
        person=person_key(name),
        role=role.value,
        token_hash=digest(secret),
        prefix=secret[: len(PREFIX) + 4],
        created_by=creator.name if creator else created_by,
        created_by_token_id=creator.token_id if creator else None,
        created_at=now,
    )
    session.add(token)
    session.commit()
    return TokenCreated(**_public(token).model_dump(), token=secret)


LISTING = listing.by_id(
    "tokens",
    ApiToken.id,
    name=listing.column(ApiToken.name, str),
    created_at=listing.column(ApiToken.created_at, datetime),
)


def _filtered(role: Role | None, revoked: bool | None) -> Select[ApiToken]:
    query = select(ApiToken)
    if role is not None:
        query = query.where(ApiToken.role == role.value)
    if revoked is not None:
        query = query.where(ApiToken.revoked_at.is_not(None) if revoked else ApiToken.revoked_at.is_(None))
    return query


def page(
    session: Session, role: Role | None, revoked: bool | None, sort: str | None, cursor: str | None, limit: int
) -> Page[TokenPublic]:
    rows, next_cursor = listing.page(session, _filtered(role, revoked), LISTING, sort, cursor, limit)
    return Page[TokenPublic](items=[_public(t) for t in rows], next_cursor=next_cursor)


def revoke(session: Session, token_id: int, now: datetime) -> TokenPublic:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}")
    if token.revoked_at is None:
        if token.role == Role.ADMIN and _active_admins(session) == 1:
            raise Conflict(f"token {token_id} is the last admin token; create another admin token first")
        token.revoked_at = now
        session.commit()
    return _public(token)


def _active_admins(session: Session) -> int:
    query = select(func.count()).where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None))
    return session.scalar(query) or 0


def authenticate(session: Session, secret: str) -> Actor | None:
    """The token's person and role, or None if unknown or revoked."""
    wanted = digest(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == wanted))
    if token is None or token.revoked_at is not None or not hmac.compare_digest(token.token_hash, wanted):
        return None
    return Actor(name=token.name, role=Role(token.role), token_id=token.id)


# Who "created" the bootstrap admin token: every other person's token descends from that token.
BOOTSTRAP_CREATOR = "server (first start)"


def ensure_bootstrap_admin(session: Session, path: Path, now: datetime) -> bool:
    """On a server with no token at all, create an admin token and write it to ``path`` (0600)."""
    if session.scalar(select(func.count()).select_from(ApiToken)):
        return False
    created = create(session, BOOTSTRAP_NAME, Role.ADMIN, created_by=BOOTSTRAP_CREATOR, now=now)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(created.token + "\n")
    os.chmod(path, 0o600)
    log.warning(
        "created the bootstrap admin API token in %s (readable by this user only); use it to create "
        "per-person tokens (POST /api/v1/tokens or `ota tokens create`), then delete the file",
        path,
    )
    return True
