"""Bundle files on disk, named by their sha256 so the same bytes are stored once.

An upload is copied to a temporary file in the bundles directory while it is
hashed and measured (so the cap holds however the client sent it), checked by
the caller, then renamed into place: a reader never sees half a bundle.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ota_server.errors import TooLarge

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StagedBundle:
    path: Path
    sha256: str
    length: int


class BundleStore:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._dir = directory
        self._max = max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max

    def path_for(self, sha256: str) -> Path:
        return self._dir / f"{sha256}.otab"

    def delta_path_for(self, sha256: str) -> Path:
        return self._dir / f"{sha256}.bsdiff"

    def stage(self, source: IO[bytes]) -> StagedBundle:
        """Copy ``source`` to a temporary file; raise :class:`TooLarge` past the cap."""
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._dir, prefix=".upload-", suffix=".part")
        digest = hashlib.sha256()
        length = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    length += len(chunk)
                    if length > self._max:
                        raise TooLarge(f"bundle exceeds the upload limit of {self._max} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedBundle(Path(name), digest.hexdigest(), length)

    def keep(self, staged: StagedBundle, *, delta: bool = False) -> Path:
        final = self.delta_path_for(staged.sha256) if delta else self.path_for(staged.sha256)
        os.replace(staged.path, final)
        return final

    @staticmethod
    def discard(staged: StagedBundle) -> None:
        staged.path.unlink(missing_ok=True)
