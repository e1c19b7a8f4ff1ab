"""API token management (admin only); the secret is in the create answer and nowhere else."""

from __future__ import annotations

from fastapi import APIRouter, status

from ota_server.api.auth import AdminSession, actor_of, needs_admin, trail_of
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.openapi import errors
from ota_server.schemas import TokenCreate, TokenCreated, TokenPublic
from ota_server.services import tokens

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: AdminSession, runtime: RuntimeDep) -> TokenCreated:
    trail_of(session).action.target.update(name=body.name, role=body.role.value)
    return tokens.create(session, body.name, body.role, created_by=actor_of(session), now=runtime.clock())


@router.get("", dependencies=[needs_admin])
def list_tokens(session: SessionDep) -> list[TokenPublic]:
    return tokens.list_all(session)


@router.delete("/{token_id}", responses=errors(409))
def revoke_token(token_id: Id, session: AdminSession, runtime: RuntimeDep) -> TokenPublic:
    """Revoke a token; it is refused from the next request on (the record stays, for the audit)."""
    return tokens.revoke(session, token_id, runtime.clock())
