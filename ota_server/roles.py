"""Who may do what: the four API roles and the permission sets routes ask for.

Roles are sets of permissions rather than a ladder: an approver may approve but
not file recalls, so the person who files one can never also be the one who
signs off its launch unless an admin made them both.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    ADMIN = "admin"


READ = frozenset(Role)
OPERATE = frozenset({Role.OPERATOR, Role.ADMIN})
APPROVE = frozenset({Role.APPROVER, Role.ADMIN})
ADMINISTER = frozenset({Role.ADMIN})


@dataclass(frozen=True)
class Actor:
    """The person behind a request: the token's name and role (``token_id`` None for the CLI)."""

    name: str
    role: Role
    token_id: int | None = None


def person_key(name: str) -> str:
    """The person a name stands for: ``ME-ADMIN``, `` me-admin`` and full-width ``me-admin`` are one person.

    NFKC folds look-alike forms (full-width letters, ligatures), ``casefold`` the case, and
    runs of whitespace become one space, so no spelling of a name makes a second person.
    """
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def describe(allowed: frozenset[Role]) -> str:
    return " or ".join(sorted(allowed))
