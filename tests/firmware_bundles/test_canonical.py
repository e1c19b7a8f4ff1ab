"""orjson's canonical and compact JSON are byte for byte python-tuf's own (firmware_bundles.canonical).

A signature over other bytes than the car's python-tuf recomputes would fail verification, and
stored files that differ from what ``json.dumps`` wrote would change what the repositories
serve: both are compared here on real signed chains and on generated JSON of every kind, the
kinds orjson renders differently (quotes, backslashes, control and non-ASCII characters,
floats, huge ints, subclasses) included.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer

from firmware_bundles import uptane
from firmware_bundles.canonical import (
    CanonicalSerializer,
    CompactSerializer,
    canonical_bytes,
    fast_bytes,
    fast_compact_bytes,
    use_for_signed_bytes,
)
from firmware_bundles.uptane import (
    Expiry,
    RepoVersions,
    RoleSigners,
    director_target,
    image_target,
    publish_targets,
    refresh_chain,
)
from firmware_bundles.window import WINDOW_FIELD

NOW = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)


def _reference(value: Any) -> bytes | type[Exception]:
    try:
        text = encode_canonical(value)
    except Exception as exc:  # what the reference refuses, ours must refuse too
        return type(exc)
    assert text is not None
    return text.encode("utf-8")


def _ours(value: Any) -> bytes | type[Exception]:
    try:
        return canonical_bytes(value)
    except Exception as exc:
        return type(exc)


class Colour(enum.Enum):
    RED = 1


class Name(str):
    pass


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),  # past orjson's 64 bits too
    st.text(),  # every code point: quotes, backslashes, control characters, non-ASCII
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)),  # the fast path's own
    st.floats(allow_nan=False),
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=800, deadline=None)
@given(JSON)
def test_canonical_bytes_are_encode_canonicals_for_any_json(value: Any) -> None:
    assert _ours(value) == _reference(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=5))
def test_compact_bytes_are_json_dumps_sorted_compact_for_any_json(value: Any) -> None:
    import json

    try:
        expected: bytes | type[Exception] = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    except Exception as exc:
        expected = type(exc)
    data = fast_compact_bytes(value)
    assert data is None or data == expected  # the fast path only where it is exact


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1.0},
        {"a": Colour.RED},
        {"a": Name("x")},
        {"a": True, "b": 2**64},
        {"a": NOW},
        {1: "x"},
        {"q": 'say "hi"'},
        {"b": "back\\slash"},
        {"n": "line\nbreak"},
        {"u": "Zürich"},
    ],
    ids=repr,
)
def test_what_orjson_renders_otherwise_goes_the_old_way(value: Any) -> None:
    assert fast_bytes(value) is None
    assert _ours(value) == _reference(value)


def test_plain_ascii_takes_the_fast_path_delete_included() -> None:
    value = {"b": [1, -2, True, None, "x\x7fy"], "a": {"z": "", "A": 0}}
    assert fast_bytes(value) == _reference(value) == b'{"a":{"A":0,"z":""},"b":[1,-2,true,null,"x\x7fy"]}'


def _chain(window: dict[str, Any] | None = None) -> tuple[RoleSigners, dict[str, bytes]]:
    signers = RoleSigners.generate(single_online_key=True)
    image = image_target(
        "bundles/BCM-X1/1.1.0.otab", 4096, "a" * 64, "BCM-X1", "1.1.0", 2, image_sha256="b" * 64, image_size=8192
    )
    targets = {image.path: director_target(image, "1HGCM82633A004352", "S-004352", min_release_counter=2)}
    extra: dict[str, Any] = {"vin": "1HGCM82633A004352"} | ({WINDOW_FIELD: window} if window else {})
    _versions, files = publish_targets(targets, signers, Expiry(), NOW, RepoVersions(3, 5, 7), extra=extra)
    return signers, files


@pytest.mark.parametrize(
    "window", [None, {"time_zone": "Europe/Zürich", "windows": [[[0, 1], "01:00", "05:00"]]}], ids=["ascii", "utf8"]
)
def test_a_signed_director_chain_is_what_python_tufs_own_serializers_give(window: dict[str, Any] | None) -> None:
    """The stored bytes re-serialize to themselves with tuf's serializers, and each signature
    verifies over tuf's own canonical bytes (what the car's python-tuf checks)."""
    signers, files = _chain(window)
    key = signers.targets[0].public_key
    for name, role in (("targets.json", Targets), ("snapshot.json", Snapshot), ("timestamp.json", Timestamp)):
        md = Metadata[Any].from_bytes(files[name])
        assert isinstance(md.signed, role)
        assert md.to_bytes(JSONSerializer(compact=True)) == files[name]
        assert md.to_bytes(CompactSerializer()) == files[name]
        canonical = CanonicalJSONSerializer().serialize(md.signed)
        assert CanonicalSerializer().serialize(md.signed) == canonical
        key.verify_signature(md.signatures[key.keyid], canonical)


def _tufs_own(md: Metadata[Any], signers: Sequence[Signer]) -> bytes:
    """Signing as python-tuf does it by itself (its canonical serializer, its compact JSON)."""
    for signer in signers:  # its serializer named: the agent's use_for_signed_bytes changes the default
        md.sign(signer, append=True, signed_serializer=CanonicalJSONSerializer())
    return md.to_bytes(JSONSerializer(compact=True))


def test_a_chain_a_refreshed_chain_and_a_root_are_the_same_bytes_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sign the same metadata with python-tuf's own path and with ours: identical files
    (ed25519 signatures are deterministic, so the whole file is compared), a root's several
    signatures and a metadata with unrecognized outer fields included."""
    signers, files = _chain({"time_zone": "UTC", "windows": []})
    later = NOW + timedelta(days=60)
    two_roots = RoleSigners([*signers.root, *RoleSigners.generate().root], signers.targets, [], [])
    extra = Metadata[Any].from_bytes(files["timestamp.json"])
    extra.unrecognized_fields["x-note"] = "kept"
    extra.signatures.clear()

    def run() -> tuple[object, ...]:
        return (
            publish_targets({}, signers, Expiry(), NOW, RepoVersions(1, 1, 1), extra={"vin": "V"}),
            refresh_chain(files, signers, Expiry(), later, force=("targets",)),
            uptane.create_root(two_roots, NOW + timedelta(days=365), consistent_snapshot=True),
            uptane.sign_metadata(copy.deepcopy(extra), signers.timestamp),
        )

    ours = run()
    monkeypatch.setattr(uptane, "_sign", _tufs_own)
    monkeypatch.setattr(uptane, "sign_metadata", _tufs_own)
    assert run() == ours


def test_a_file_with_delete_is_json_dumps_own_and_its_signed_bytes_stay_canonical() -> None:
    """Found by the property test above: DEL is ASCII, raw in canonical JSON, escaped by json.dumps."""
    import json

    value = {"s": "x\x7fy"}
    assert fast_bytes(value) == _reference(value)
    assert fast_compact_bytes(value) is None
    assert json.dumps(value, separators=(",", ":"), sort_keys=True).encode() == b'{"s":"x\\u007fy"}'


@pytest.mark.parametrize(
    "window", [None, {"time_zone": "Europe/Zürich", "windows": [[[0, 1], "01:00", "05:00"]]}], ids=["ascii", "utf8"]
)
def test_signed_bytes_on_ours_are_tufs_own_and_the_checks_accept_and_refuse_alike(
    window: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the agent's python-tuf checks signatures over (``Metadata.signed_bytes``, on orjson once
    the agent starts) is python-tuf's own encoding: a signed chain verifies, a changed one is refused."""
    monkeypatch.setattr(Metadata, "signed_bytes", Metadata.signed_bytes)  # python-tuf's again after the test
    use_for_signed_bytes()
    use_for_signed_bytes()  # idempotent
    signers, files = _chain(window)
    root = Metadata[Root].from_bytes(uptane.create_root(signers, NOW + timedelta(days=365), consistent_snapshot=True))
    for name, role in (("targets.json", "targets"), ("snapshot.json", "snapshot"), ("timestamp.json", "timestamp")):
        md = Metadata[Any].from_bytes(files[name])
        assert md.signed_bytes == CanonicalJSONSerializer().serialize(md.signed)
        root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
        md.signed.version += 1  # what an attacker changes after signing
        with pytest.raises(UnsignedMetadataError):
            root.signed.verify_delegate(role, md.signed_bytes, md.signatures)
