import io

import pytest

from firmware_bundles.bundle import build_bundle, image_header, open_bundle, sample_image
from firmware_bundles.errors import InvalidBundle


def test_roundtrip_and_determinism() -> None:
    image = sample_image("ecu-a", "2.1.0", size=10_000)
    one = build_bundle(image, "ecu-a", "2.1.0", 7)
    two = build_bundle(image, "ecu-a", "2.1.0", 7)
    assert one.data == two.data
    with open_bundle(io.BytesIO(one.data)) as (manifest, stream):
        assert manifest.version == "2.1.0" and manifest.release_counter == 7
        assert stream.read() == image
    assert image_header(image) == {"hardware_id": "ecu-a", "version": "2.1.0"}


def test_truncated_bundle_is_invalid() -> None:
    built = build_bundle(sample_image("ecu-a", "1"), "ecu-a", "1", 1)
    with pytest.raises(InvalidBundle), open_bundle(io.BytesIO(built.data[:700])) as (_m, stream):
        stream.read()


def test_garbage_is_invalid() -> None:
    with pytest.raises(InvalidBundle), open_bundle(io.BytesIO(b"not a tar" * 100)):
        pass
