from datetime import UTC, datetime

import pytest
from tuf.api.metadata import Metadata, TargetFile, Targets

from firmware_bundles import uptane
from firmware_bundles.errors import TargetMismatch
from firmware_bundles.messages import FailureReason

VIN = "1HGCM82633A004352"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _image() -> TargetFile:
    return uptane.image_target(uptane.bundle_target_path("hw", "2"), 100, "a" * 64, "hw", "2", 2)


def _director(vin: str, serial: str = "ecu1", image: TargetFile | None = None) -> Targets:
    tf = uptane.director_target(image or _image(), vin, serial)
    signers = uptane.RoleSigners.generate(single_online_key=True)
    _v, files = uptane.publish_targets(
        {tf.path: tf}, signers, uptane.Expiry(), NOW, uptane.RepoVersions(), extra={"vin": vin}
    )
    return Metadata[Targets].from_bytes(files["targets.json"]).signed


def test_assignment_for_this_vehicle() -> None:
    (a,) = uptane.assignments_for(_director(VIN), VIN, {"ecu1": "hw"})
    assert (a.ecu_serial, a.version, a.release_counter) == ("ecu1", "2", 2)
    uptane.check_image_agrees(a, _image())


def test_other_vin_rejected() -> None:
    with pytest.raises(TargetMismatch) as err:
        uptane.assignments_for(_director("WVWZZZ1JZXW000001"), VIN, {"ecu1": "hw"})
    assert err.value.reason == FailureReason.NOT_FOR_THIS_VEHICLE


def test_unknown_ecu_rejected() -> None:
    with pytest.raises(TargetMismatch) as err:
        uptane.assignments_for(_director(VIN, serial="ecu9"), VIN, {"ecu1": "hw"})
    assert err.value.reason == FailureReason.UNKNOWN_ECU


def test_wrong_hardware_rejected() -> None:
    with pytest.raises(TargetMismatch) as err:
        uptane.assignments_for(_director(VIN), VIN, {"ecu1": "other-hw"})
    assert err.value.reason == FailureReason.HARDWARE_MISMATCH


def test_image_repo_must_agree() -> None:
    (a,) = uptane.assignments_for(_director(VIN), VIN, {"ecu1": "hw"})
    with pytest.raises(TargetMismatch) as err:
        uptane.check_image_agrees(a, None)
    assert err.value.reason == FailureReason.TARGET_NOT_IN_IMAGE_REPO
    other = uptane.image_target(a.path, 100, "b" * 64, "hw", "2", 2)
    with pytest.raises(TargetMismatch) as err:
        uptane.check_image_agrees(a, other)
    assert err.value.reason == FailureReason.TARGET_MISMATCH
