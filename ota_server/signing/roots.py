"""Each repository's root: version 1 made once (development keys) or by ``ota keys init``.

Later versions come only from ``ota keys rotate``/``revoke`` (signing/keyadmin.py); the
server serves every ``N.root.json`` so a car holding an old root walks the chain. The
Director's root asks for consistent snapshots: cars fetch ``N.snapshot.json`` and
``M.targets.json`` by version, which any replica may answer from memory.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from firmware_bundles.uptane import Expiry, RoleSigners, create_root
from ota_server.signing.store import DIRECTOR, REPO_WIDE, latest_root, put_file


def ensure_root(
    factory: sessionmaker[Session],
    repo: str,
    dev_signers: Callable[[], RoleSigners],
    expiry: Expiry,
    now: datetime,
) -> bytes:
    """The current root's bytes; with none stored, sign version 1 with ``dev_signers()``.

    ``dev_signers`` is only called when there is no root, so a server set up with
    ``ota keys init`` never makes development keys. Whether the keys on disk can
    sign for the stored root is checked by :class:`signing.keys.RepoKeys`.
    """
    with factory() as session:
        row = latest_root(session, repo)
        if row is not None:
            return row.data
        data = create_root(dev_signers(), now + expiry.root, consistent_snapshot=repo == DIRECTOR)
        put_file(session, repo, REPO_WIDE, "1.root.json", 1, data, now)
        try:
            session.commit()
        except IntegrityError:  # another replica won the race: use its root
            session.rollback()
            row = latest_root(session, repo)
            assert row is not None
            return row.data
        return data
