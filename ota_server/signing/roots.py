"""Creating each repository's root once and checking it still matches the keys on disk.

A root in the database that the keys on disk cannot sign for would make every
later targets/timestamp unverifiable, so startup refuses it with a clear error.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from tuf.api.metadata import Metadata, Root

from firmware_bundles.uptane import TOP_LEVEL_ROLES, Expiry, RoleSigners, create_root
from ota_server.errors import NotReady
from ota_server.signing.store import REPO_WIDE, latest_root, put_file


def _check_keys(root_bytes: bytes, signers: RoleSigners, repo: str) -> None:
    root = Metadata[Root].from_bytes(root_bytes).signed
    for role in TOP_LEVEL_ROLES:
        trusted = set(root.roles[role].keyids)
        ours = {signer.public_key.keyid for signer in signers.for_role(role)}
        if not ours <= trusted:
            raise NotReady(
                f"the {repo} repository's stored root does not trust the {role} key on disk; "
                "restore the original keys directory or start with a fresh database"
            )


def ensure_root(
    factory: sessionmaker[Session], repo: str, signers: RoleSigners, expiry: Expiry, now: datetime
) -> bytes:
    """Return the current root's bytes, signing version 1 if the repository has none."""
    with factory() as session:
        row = latest_root(session, repo)
        if row is not None:
            _check_keys(row.data, signers, repo)
            return row.data
        data = create_root(signers, now + expiry.root)
        put_file(session, repo, REPO_WIDE, "1.root.json", 1, data, now)
        try:
            session.commit()
        except IntegrityError:  # another replica won the race: use its root
            session.rollback()
            row = latest_root(session, repo)
            assert row is not None
            _check_keys(row.data, signers, repo)
            return row.data
        return data
