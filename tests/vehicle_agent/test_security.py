"""Attacks from the Uptane threat model: for each, nothing is installed, the old software
keeps running, the precise reason reaches the server, and the next genuine update succeeds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from firmware_bundles import repo_paths
from firmware_bundles.bundle import build_bundle, sample_image
from firmware_bundles.messages import FailureReason, ReportState
from firmware_bundles.uptane import RoleSigners, image_target
from vehicle_agent.installer import SlotBackend

from .conftest import Car
from .fakes import HW, OLD, OTHER_VIN, REPO, SERIAL, FakeServer

S = ReportState
R = FailureReason


async def refused(
    car: Car, server: FakeServer, reason: FailureReason, campaign_id: int = 1, *, state: ReportState = S.FAILED
) -> None:
    """The campaign ended in ``state`` (failed, or rolled_back after a trial boot) with ``reason``
    and left the car as it was."""
    assert await car.agent.handle(server.notice(campaign_id)) is state
    last = car.link.reports[-1]
    assert (last.state, last.reason) == (state, reason), last.detail
    assert last.campaign_id == campaign_id
    assert last.installed_version == OLD


async def genuine_update_succeeds(car: Car, server: FakeServer, version: str = "3.0", campaign_id: int = 99) -> None:
    server.assign({SERIAL: server.release(version, int(version.split(".")[0]))})
    assert await car.agent.handle(server.notice(campaign_id)) is S.REMEDIED
    assert car.running_version() == version
    assert car.slots.booted_slot() == car.slots.active_slot()


async def test_tampered_bundle_is_refused_with_hash_mismatch(car: Car, server: FakeServer) -> None:
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    url = repo_paths.targets_url(REPO) + target.path
    genuine = server.bundles[target.path].data
    tampered = bytearray(genuine)
    tampered[len(tampered) // 2] ^= 0x01
    server.transport.files[url] = bytes(tampered)

    await refused(car, server, R.HASH_MISMATCH)
    car.assert_untouched()

    # the same campaign, re-issued with a new nonce once the mirror is fixed
    server.transport.files[url] = genuine
    notice = server.notice(1)
    assert await car.agent.handle(notice) is S.REMEDIED
    assert car.link.reports[-1].attempt == 2
    assert car.running_version() == "2.0"


async def test_image_metadata_signed_with_a_wrong_key(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    server.publish_image(signers=RoleSigners.generate())
    await refused(car, server, R.METADATA_SIGNATURE_INVALID)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_director_metadata_signed_with_a_wrong_key(car: Car, server: FakeServer) -> None:
    target = server.release("2.0", 2)
    server.assign({SERIAL: target}, signers=RoleSigners.generate(single_online_key=True))
    await refused(car, server, R.METADATA_SIGNATURE_INVALID)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_director_metadata_for_another_vin(car: Car, server: FakeServer) -> None:
    target = server.release("2.0", 2)
    # validly signed, but for another car, and served at this car's URL
    server.assign({SERIAL: target}, signed_vin=OTHER_VIN)
    await refused(car, server, R.NOT_FOR_THIS_VEHICLE)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_director_assigns_an_unknown_ecu(car: Car, server: FakeServer) -> None:
    server.assign({"ECU-9999": server.release("2.0", 2)})
    await refused(car, server, R.UNKNOWN_ECU)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_director_assigns_an_image_never_released(car: Car, server: FakeServer) -> None:
    rogue = build_bundle(sample_image(HW, "6.6.6"), HW, "6.6.6", 66)
    path = f"bundles/{HW}/6.6.6.otab"
    server.transport.files[repo_paths.targets_url(REPO) + path] = rogue.data
    server.assign({SERIAL: image_target(path, rogue.length, rogue.sha256, HW, "6.6.6", 66)})
    await refused(car, server, R.TARGET_NOT_IN_IMAGE_REPO)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_director_and_image_repository_disagree_on_the_hash(car: Car, server: FakeServer) -> None:
    released = server.release("2.0", 2)
    rogue = build_bundle(sample_image(HW, "2.0") + b"backdoor", HW, "2.0", 2)
    server.transport.files[repo_paths.targets_url(REPO) + released.path] = rogue.data
    server.assign({SERIAL: image_target(released.path, rogue.length, rogue.sha256, HW, "2.0", 2)})
    await refused(car, server, R.TARGET_MISMATCH)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_endless_data_is_cut_off_at_the_signed_length(car: Car, server: FakeServer) -> None:
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while True:
            sent += 4096
            yield b"\0" * 4096

    server.transport.files[repo_paths.targets_url(REPO) + target.path] = endless
    await refused(car, server, R.LENGTH_MISMATCH)
    assert sent <= target.length + 4096  # stopped as soon as the cap was passed
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_expired_metadata_is_refused(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    server.publish_image(now=server.now - timedelta(days=400))
    await refused(car, server, R.METADATA_EXPIRED)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_replayed_older_director_metadata_is_a_rollback(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    old_files = dict(server.assign({SERIAL: server.image_targets[f"bundles/{HW}/2.0.otab"]}))
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED
    server.assign({SERIAL: server.release("3.0", 3)})
    assert await car.agent.handle(server.notice(2)) is S.REMEDIED

    server.serve_director(old_files)  # an attacker replays the metadata that assigned 2.0
    assert await car.agent.handle(server.notice(3)) is S.FAILED
    assert car.link.reports[-1].reason is R.METADATA_ROLLBACK
    assert car.running_version() == "3.0"
    assert car.slots.pending_try() is None

    await genuine_update_succeeds(car, server, "4.0")


async def test_older_release_counter_is_refused_even_if_signed(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("3.0", 3)})
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED
    server.assign({SERIAL: server.release("2.0", 2)})  # a compromised Director key alone
    assert await car.agent.handle(server.notice(2)) is S.FAILED
    assert car.link.reports[-1].reason is R.METADATA_ROLLBACK
    assert car.running_version() == "3.0"
    await genuine_update_succeeds(car, server, "4.0")


async def test_bundle_whose_manifest_names_other_hardware(car: Car, server: FakeServer) -> None:
    wrong = build_bundle(sample_image("other-hw", "2.0"), "other-hw", "2.0", 2)
    server.assign({SERIAL: server.release("2.0", 2, bundle=wrong)})
    await refused(car, server, R.BUNDLE_INVALID)
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


async def test_failing_health_check_rolls_back_to_the_old_slot(car: Car, server: FakeServer) -> None:
    # the manifest is right but the image boots as something else: the header check fails
    broken = build_bundle(sample_image(HW, "2.0-broken"), HW, "2.0", 2)
    server.assign({SERIAL: server.release("2.0", 2, bundle=broken)})
    await refused(car, server, R.HEALTH_CHECK_FAILED, state=S.ROLLED_BACK)
    assert car.link.reports[-1].health_ok is False
    assert [r.state for r in car.link.reports][-2] is S.REBOOTING
    car.assert_untouched(spare=None)  # the spare slot was written, but never committed
    await genuine_update_succeeds(car, server)


async def test_pluggable_health_check_failure(car: Car, server: FakeServer) -> None:
    class Unhealthy:
        def check(self, slots: SlotBackend, expected: object) -> str | None:
            return "brake controller did not answer"

    car.build(health=Unhealthy())
    server.assign({SERIAL: server.release("2.0", 2)})
    await refused(car, server, R.HEALTH_CHECK_FAILED, state=S.ROLLED_BACK)
    assert "did not answer" in car.link.reports[-1].detail
    car.assert_untouched(spare=None)


async def test_unreachable_repository_reports_fetch_failed_after_retries(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    server.transport.offline = True
    await refused(car, server, R.METADATA_FETCH_FAILED)
    car.assert_untouched()
    server.transport.offline = False
    await genuine_update_succeeds(car, server)


async def test_slow_retrieval_is_stopped_by_the_download_deadline(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    ticks = iter(range(0, 10**9, 1000))  # simulated time: each look at the clock is 1000 s later
    car.build(monotonic=lambda: float(next(ticks)))
    await refused(car, server, R.DOWNLOAD_TOO_SLOW)
    assert "not complete after" in car.link.reports[-1].detail
    car.assert_untouched()
    car.build()
    await genuine_update_succeeds(car, server)
