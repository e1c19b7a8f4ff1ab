"""TUF's two JSON forms (the canonical bytes a signature covers, the compact file) on orjson.

Signing a car's Director chain serialized each of its three metadata twice in pure Python:
securesystemslib's ``encode_canonical`` for the bytes signed, the standard library's
``json.dumps`` for the file. orjson with sorted keys writes the very same bytes for what these
documents hold, and does it some 30 times faster: a launch signs three per car.

"The very same" holds for JSON made only of dicts with ``str`` keys, lists, tuples, ``str``,
``int``, ``bool`` and ``None`` (checked by exact type, so no subclass, float, enum, date or
dataclass gets orjson's own rendering), whose output is ASCII with no backslash: then no string
held a quote, a backslash, a control or a non-ASCII character, the only places where
``encode_canonical`` (escapes just ``"`` and ``\\``, writes the rest raw), ``json.dumps``
(``ensure_ascii``: ``\\uXXXX``) and orjson (raw UTF-8, ``\\n``/``\\u00XX``) differ. Keys sort by
code point in all three for ASCII. Anything else, or an int beyond 64 bits, goes the old way,
so the bytes never differ (``tests/firmware_bundles/test_canonical.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, Signed
from tuf.api.serialization import MetadataSerializer, SerializationError, SignedSerializer
from tuf.api.serialization.json import JSONSerializer

_COMPACT = JSONSerializer(compact=True)


def _plain(value: Any) -> bool:
    """Only the JSON types both encoders render alike (exact types: no subclasses)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    if kind is list or kind is tuple:
        return all(_plain(item) for item in value)
    return False


def fast_bytes(value: Any) -> bytes | None:
    """Sorted-key compact JSON by orjson when it is byte for byte what the Python encoders give; else None."""
    if not _plain(value):
        return None
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an int beyond 64 bits
        return None
    return data if data.isascii() and b"\\" not in data else None


def fast_compact_bytes(value: Any) -> bytes | None:
    """:func:`fast_bytes` where it is also ``json.dumps``'s compact file: not with DEL (0x7f), which
    ``encode_canonical`` and orjson write raw and ``json.dumps`` (``ensure_ascii``) escapes."""
    data = fast_bytes(value)
    return data if data is not None and b"\x7f" not in data else None


def canonical_bytes(value: Any) -> bytes:
    """OLPC canonical JSON as securesystemslib's ``encode_canonical`` writes it, UTF-8."""
    data = fast_bytes(value)
    if data is not None:
        return data
    text = encode_canonical(value)
    assert text is not None
    return text.encode("utf-8")


class CanonicalSerializer(SignedSerializer):
    """python-tuf's ``CanonicalJSONSerializer``, the same bytes, on orjson where that is exact."""

    def serialize(self, signed_obj: Signed) -> bytes:
        try:
            return canonical_bytes(signed_obj.to_dict())
        except Exception as exc:
            raise SerializationError from exc


def _signed_bytes(md: Metadata[Any]) -> bytes:
    return CanonicalSerializer().serialize(md.signed)


def use_for_signed_bytes() -> None:
    """python-tuf's ``Metadata.signed_bytes`` on :class:`CanonicalSerializer`: the same bytes, faster.

    ``signed_bytes`` is what python-tuf's client encodes to check every signature, twice per
    file loaded (``trusted_metadata_set._load_from_metadata``), in securesystemslib's pure
    Python: 4% of a simulated car's CPU (issue 19). The bytes are those ``encode_canonical``
    writes (the module docstring says why; ``tests/firmware_bundles/test_canonical.py``
    compares them), so every check accepts and refuses exactly what it did. Idempotent; the
    agent's ``LeanUpdater`` calls it as it is built.
    """
    current = vars(Metadata)["signed_bytes"]  # the property object itself
    if not (isinstance(current, property) and current.fget is _signed_bytes):
        setattr(Metadata, "signed_bytes", property(_signed_bytes))  # noqa: B010  (a property, replaced)


class CompactSerializer(MetadataSerializer):
    """python-tuf's ``JSONSerializer(compact=True)`` (sorted keys, no spaces), the same bytes."""

    def serialize(self, metadata_obj: Metadata[Any]) -> bytes:
        try:
            data = fast_compact_bytes(metadata_obj.to_dict())
        except Exception as exc:
            raise SerializationError from exc
        return _COMPACT.serialize(metadata_obj) if data is None else data


class _Serialized(SignedSerializer):
    """The signed part's canonical bytes, made once for every signature and the file."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self, signed_obj: Signed) -> bytes:
        return self.data


def sign_and_serialize(md: Metadata[Any], signers: Sequence[Signer]) -> bytes:
    """Each of ``signers`` signs ``md`` (``Metadata.sign``, appending) and the compact file is given.

    The signed part is turned into a dict and encoded once, for the signatures and the file
    alike (``{"signatures":[...],"signed":...}`` with sorted keys is that encoding behind the
    signatures): python-tuf's own path turns it into a dict and encodes it once per signature
    and again for the file. Whatever the fast path does not cover goes python-tuf's way.
    """
    canonical = None if md.unrecognized_fields else fast_bytes(md.signed.to_dict())
    if canonical is None:
        for signer in signers:
            md.sign(signer, append=True, signed_serializer=CanonicalSerializer())
        return CompactSerializer().serialize(md)
    once = _Serialized(canonical)
    for signer in signers:
        md.sign(signer, append=True, signed_serializer=once)
    signatures = fast_bytes([signature.to_dict() for signature in md.signatures.values()])
    if signatures is None or b"\x7f" in canonical:  # the file as json.dumps writes it (see fast_compact_bytes)
        return _COMPACT.serialize(md)
    return b'{"signatures":' + signatures + b',"signed":' + canonical + b"}"
