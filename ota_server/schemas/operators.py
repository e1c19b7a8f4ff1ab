"""Operators: API tokens, launch approvals and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    Field,
)

from ota_server.roles import Role
from ota_server.schemas.common import INPUT_MODEL, OUTPUT_MODEL, Text

# --- operators: tokens, launch approval, audit ---------------------------------------


class TokenCreate(BaseModel):
    model_config = INPUT_MODEL
    name: Text = Field(min_length=1, max_length=64, description="The person this token belongs to")
    role: Role


class TokenPublic(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str = Field(description="The secret's first characters, to tell tokens apart")
    created_by: str
    created_by_token: int | None = Field(
        description="The id of the token that created this one (none for the bootstrap token)"
    )
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret; shown this once, only its sha256 is stored")


class LaunchRequestPublic(BaseModel):
    """A safety recall's launch: requested by one person, launched when another approves."""

    model_config = OUTPUT_MODEL
    recall_id: int
    state: str = Field(description="awaiting_approval or approved")
    requested_by: str
    requested_at: datetime
    approved_by: str | None
    approved_at: datetime | None


class AuditEntryPublic(BaseModel):
    model_config = OUTPUT_MODEL
    seq: int
    at: datetime
    actor: str
    role: str
    method: str
    route: str
    target: dict[str, Any]
    status: int
    detail: str | None
    prev_hash: str
    hash: str


class AuditVerification(BaseModel):
    ok: bool
    entries: int = Field(description="Entries checked and found intact")
    head_hash: str = Field(description="Hash of the last intact entry; keep it elsewhere to anchor the chain")
    first_bad: int | None
    problem: str | None
