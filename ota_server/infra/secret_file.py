"""A server's own random secret kept in a file (created once, 0600), shared by replicas that share the file."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_BYTES = 32


def load_or_create(path: Path) -> bytes:
    """The secret in ``path``; a new random one written there first if there is none.

    Two processes starting together agree (the file is created exclusively, the loser reads
    the winner's). A read-only directory gets a secret for this process only, with a warning.
    """
    try:
        secret = path.read_bytes()
        if len(secret) >= SECRET_BYTES:
            return secret
        log.warning("%s holds a secret shorter than %d bytes: not used", path, SECRET_BYTES)
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(SECRET_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot keep a secret in %s (%s): this process's secret changes when it restarts", path, exc)
        return secret
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return secret
