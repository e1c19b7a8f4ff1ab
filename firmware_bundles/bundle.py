"""The bundle format: an uncompressed POSIX tar holding ``manifest.json`` then ``image.bin``.

Tar keeps the format readable with standard tools and lets the agent stream the
image into a slot without unpacking to disk. The bundle as a whole is the TUF
target (its length and sha256 are signed); the manifest repeats the image's own
hash so the installer can check what it wrote into the slot.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from firmware_bundles.errors import InvalidBundle

FORMAT = "ota-bundle/1"
MANIFEST_NAME = "manifest.json"
IMAGE_NAME = "image.bin"
MAX_MANIFEST_BYTES = 64 * 1024
IMAGE_MAGIC = b"OTAIMG1\n"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Manifest:
    hardware_id: str
    version: str
    release_counter: int
    image_size: int
    image_sha256: str

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "hardware_id": self.hardware_id,
            "version": self.version,
            "release_counter": self.release_counter,
            "image": {"size": self.image_size, "sha256": self.image_sha256},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            body = json.loads(raw)
            if body["format"] != FORMAT:
                raise InvalidBundle(f"unknown bundle format {body['format']!r}")
            manifest = cls(
                hardware_id=str(body["hardware_id"]),
                version=str(body["version"]),
                release_counter=int(body["release_counter"]),
                image_size=int(body["image"]["size"]),
                image_sha256=str(body["image"]["sha256"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidBundle(f"manifest is malformed: {exc}") from exc
        if manifest.image_size < 0 or len(manifest.image_sha256) != 64:
            raise InvalidBundle("manifest image size or hash is invalid")
        return manifest


@dataclass(frozen=True)
class BuiltBundle:
    manifest: Manifest
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def length(self) -> int:
        return len(self.data)


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # deterministic: the same inputs give the same bytes and hash
    return info


def build_bundle(image: bytes, hardware_id: str, version: str, release_counter: int) -> BuiltBundle:
    """Pack an image into a bundle; the same inputs always give the same bytes."""
    if not hardware_id or not version or release_counter < 0:
        raise InvalidBundle("hardware_id and version are required; release_counter must be >= 0")
    manifest = Manifest(hardware_id, version, release_counter, len(image), hashlib.sha256(image).hexdigest())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        raw = manifest.to_json()
        tar.addfile(_member(MANIFEST_NAME, len(raw)), io.BytesIO(raw))
        tar.addfile(_member(IMAGE_NAME, len(image)), io.BytesIO(image))
    return BuiltBundle(manifest, out.getvalue())


@contextmanager
def open_bundle(fileobj: IO[bytes]) -> Iterator[tuple[Manifest, IO[bytes]]]:
    """Yield the manifest and a stream of the image, reading the tar front to back."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isfile():
                raise InvalidBundle(f"first member must be {MANIFEST_NAME}")
            if first.size > MAX_MANIFEST_BYTES:
                raise InvalidBundle("manifest too large")
            mf = tar.extractfile(first)
            assert mf is not None
            manifest = Manifest.from_json(mf.read())
            second = tar.next()
            if second is None or second.name != IMAGE_NAME or not second.isfile():
                raise InvalidBundle(f"second member must be {IMAGE_NAME}")
            if second.size != manifest.image_size:
                raise InvalidBundle(f"image is {second.size} bytes, manifest says {manifest.image_size}")
            image = tar.extractfile(second)
            assert image is not None
            yield manifest, image
    except tarfile.TarError as exc:
        raise InvalidBundle(f"not a readable bundle: {exc}") from exc


def read_manifest(path: Path) -> Manifest:
    with path.open("rb") as fh, open_bundle(fh) as (manifest, _image):
        return manifest


def sample_image(hardware_id: str, version: str, size: int = 64 * 1024) -> bytes:
    """A deterministic stand-in for a root filesystem image.

    It starts with a small header naming its hardware id and version, which is what
    the simulated boot and health check read back from a slot.
    """
    header = IMAGE_MAGIC + json.dumps({"hardware_id": hardware_id, "version": version}).encode() + b"\n"
    if size < len(header):
        raise InvalidBundle(f"image size {size} is smaller than its header")
    seed = hashlib.sha256(f"{hardware_id}/{version}".encode()).digest()
    body = bytearray()
    counter = 0
    while len(body) < size - len(header):
        body += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return header + bytes(body[: size - len(header)])


def revised_image(base: bytes, hardware_id: str, version: str, *, changed_bytes: int = 4096) -> bytes:
    """The next version of ``base`` as a real fix looks: a new header and a few KiB of changed code.

    Deterministic, so the simulator, tests and benchmark can rebuild the same images;
    the rest of the body is ``base``'s, which is what makes a binary delta small.
    """
    body = base
    if base.startswith(IMAGE_MAGIC):
        body = base[base.index(b"\n", len(IMAGE_MAGIC)) + 1 :]
    header = IMAGE_MAGIC + json.dumps({"hardware_id": hardware_id, "version": version}).encode() + b"\n"
    seed = hashlib.sha256(f"{hardware_id}/{version}/patch".encode()).digest()
    patch = bytearray()
    while len(patch) < min(changed_bytes, len(body)):
        patch += hashlib.sha256(seed + len(patch).to_bytes(8, "big")).digest()
    at = len(body) // 3
    patched = body[:at] + bytes(patch[: len(body) - at]) + body[at + len(patch) :]
    return header + patched[: len(body)]


def image_header(head: bytes) -> dict[str, str] | None:
    """Parse the header of :func:`sample_image`; ``None`` if the bytes carry none."""
    if not head.startswith(IMAGE_MAGIC):
        return None
    line = head[len(IMAGE_MAGIC) :].split(b"\n", 1)[0]
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return {str(k): str(v) for k, v in parsed.items()}
