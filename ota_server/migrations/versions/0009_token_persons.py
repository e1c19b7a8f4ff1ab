"""Token persons: each token's normalised person key and the token that created it.

A launch request also records the token it came with.

The two-person rule compares persons, not spellings of a name, and refuses an approver
whose token the requester created (or the other way round). Existing rows get their
person key from their name, and their creator from ``created_by`` (a name until now):
the newest earlier token of that person, or none (the bootstrap token, CLI-made tokens).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 09:00:00.000000
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _person(name: str) -> str:
    """A frozen copy of ota_server.roles.person_key (a migration must not change with the code)."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())[:64]


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("person", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("created_by_token_id", sa.Integer(), nullable=True))
    tokens = sa.table(
        "api_tokens",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("created_by", sa.String()),
        sa.column("person", sa.String()),
        sa.column("created_by_token_id", sa.Integer()),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(tokens.c.id, tokens.c.name, tokens.c.created_by).order_by(tokens.c.id)).all()
    newest: dict[str, int] = {}  # person -> newest token id so far
    for token_id, name, created_by in rows:
        person = _person(name)
        creator = newest.get(_person(created_by))
        bind.execute(tokens.update().where(tokens.c.id == token_id).values(person=person, created_by_token_id=creator))
        newest[person] = token_id
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("person", existing_type=sa.String(length=64), nullable=False)
        batch.create_index("ix_api_tokens_person", ["person"], unique=False)
        batch.create_foreign_key("fk_api_tokens_created_by_token_id", "api_tokens", ["created_by_token_id"], ["id"])
    with op.batch_alter_table("launch_requests") as batch:
        batch.add_column(sa.Column("requested_by_token_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_launch_requests_requested_by_token_id", "api_tokens", ["requested_by_token_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("launch_requests") as batch:
        batch.drop_constraint("fk_launch_requests_requested_by_token_id", type_="foreignkey")
        batch.drop_column("requested_by_token_id")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("fk_api_tokens_created_by_token_id", type_="foreignkey")
        batch.drop_index("ix_api_tokens_person")
        batch.drop_column("created_by_token_id")
        batch.drop_column("person")
