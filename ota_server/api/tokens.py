"""API token management (admin only); the secret is in the create answer and nowhere else."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from ota_server.api.auth import AdminSession, actor_of, needs_admin, trail_of
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.api.openapi import errors
from ota_server.roles import Role
from ota_server.schemas import TokenCreate, TokenCreated, TokenPublic
from ota_server.schemas.listing import Page
from ota_server.services import tokens

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: AdminSession, runtime: RuntimeDep) -> TokenCreated:
    trail_of(session).action.target.update(name=body.name, role=body.role.value)
    return tokens.create(session, body.name, body.role, created_by=actor_of(session), now=runtime.clock())


@router.get("", dependencies=[needs_admin], responses=CSV_RESPONSES)
@exportable("tokens.csv")
def list_tokens(
    session: SessionDep,
    role: Role | None = None,
    revoked: Annotated[bool | None, Query(description="Only revoked (true) or live (false) tokens")] = None,
    sort: Annotated[str | None, sort_query(tokens.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[TokenPublic]:
    """Tokens (never their secrets), oldest first by default, a page at a time."""
    return tokens.page(session, role, revoked, sort, cursor, limit)


@router.delete("/{token_id}", responses=errors(409))
def revoke_token(token_id: Id, session: AdminSession, runtime: RuntimeDep) -> TokenPublic:
    """Revoke a token; it is refused from the next request on (the record stays, for the audit)."""
    return tokens.revoke(session, token_id, runtime.clock())
