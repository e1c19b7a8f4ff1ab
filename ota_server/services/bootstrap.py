"""First start: an admin token written to a file, so a new server can be reached at all."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.roles import Role
from ota_server.services import audit, tokens

SERVER_ACTOR = "server"


def ensure_admin_token(sessions: sessionmaker[Session], path: Path, clock: Clock) -> bool:
    """Create the bootstrap admin token when no token exists yet (audited); True if created."""
    action = audit.Action(
        actor=SERVER_ACTOR,
        role=Role.ADMIN.value,
        method="BOOT",
        route="first start: bootstrap admin token",
        target={"name": tokens.BOOTSTRAP_NAME, "file": str(path)},
        status=201,
    )
    with sessions() as session:
        audit.record_commits(session, action, clock)
        try:
            return tokens.ensure_bootstrap_admin(session, path, clock())
        except IntegrityError:  # another replica made it first
            session.rollback()
            return False
