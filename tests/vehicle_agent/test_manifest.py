"""The car's version manifest: sent at start, after an install or a rollback, and daily; counted and signed."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from firmware_bundles.assignment import Assignment
from firmware_bundles.bundle import sample_image
from firmware_bundles.messages import FailureReason, ManifestReason, ReportState, VersionManifest
from firmware_bundles.report_signing import generate_report_key, private_key_pem, public_key, verify_report
from vehicle_agent.agent import Agent
from vehicle_agent.config import EcuConfig
from vehicle_agent.installer import FileSlots, SlotBackend
from vehicle_agent.link import FakeLink

from .conftest import Car
from .fakes import HW, OLD, SERIAL, VIN, FakeServer

R = ManifestReason
S = ReportState
GATEWAY, GATEWAY_HW = "ECU-0002", "gw-2024"
DAY = timedelta(days=1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Clock:
    """The wall clock, moved by the test (or by the daily timer below)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def only(link: FakeLink) -> VersionManifest:
    assert len(link.manifests) == 1, link.manifests
    return link.manifests[0]


async def test_the_start_manifest_names_the_factory_image_measured_from_its_slot(car: Car) -> None:
    key = generate_report_key()
    car.agent = Agent(
        replace(car.agent.config, report_key=private_key_pem(key)),
        link=car.link,
        transport=car.server.transport,
        sleep=car.time.sleep,
    )
    car.link.close()
    await car.agent.run()

    manifest = only(car.link)
    assert (manifest.vin, manifest.counter, manifest.reason) == (VIN, 1, R.START)
    (ecu,) = manifest.ecus
    image = sample_image(HW, OLD)
    assert (ecu.ecu_serial, ecu.hardware_id, ecu.version, ecu.release_counter) == (SERIAL, HW, OLD, 0)
    assert (ecu.image_sha256, ecu.image_length, ecu.slot) == (sha(image), len(image), "a")
    assert (ecu.target_path, ecu.target_sha256, ecu.target_length) == (None, None, None)  # the factory image
    verify_report(manifest, public_key(key.public_key.keyid, key.public_key.to_dict()))
    assert car.agent.journal.data.manifest is None  # delivered


async def test_after_an_install_the_manifest_names_the_new_image_and_its_target(car: Car, server: FakeServer) -> None:
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    assert await car.agent.handle(server.notice()) is S.REMEDIED

    manifest = only(car.link)
    assert manifest.reason is R.INSTALL
    (ecu,) = manifest.ecus
    image = sample_image(HW, "2.0")
    assert (ecu.version, ecu.release_counter, ecu.slot) == ("2.0", 2, "b")
    assert (ecu.image_sha256, ecu.image_length) == (sha(image), len(image))
    assert (ecu.target_path, ecu.target_sha256, ecu.target_length) == (
        target.path,
        target.hashes["sha256"],
        target.length,
    )


class FailsFor:
    """A health check that fails on one ECU only."""

    def __init__(self, serial: str) -> None:
        self.serial = serial

    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        return "no CAN traffic" if expected.ecu_serial == self.serial else None


def two_ecu_car(car: Car, **kwargs: object) -> Agent:
    config = car.agent.config
    config = replace(config, ecus=(*config.ecus, EcuConfig(GATEWAY, GATEWAY_HW, "4.0")))
    car.link = FakeLink(VIN)
    car.agent = Agent(config, link=car.link, transport=car.server.transport, sleep=car.time.sleep, **kwargs)  # type: ignore[arg-type]
    return car.agent


async def test_a_rollback_sends_a_manifest_of_the_old_images(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    car.build(health=FailsFor(SERIAL))
    assert await car.agent.handle(server.notice()) is S.ROLLED_BACK

    manifest = only(car.link)
    assert manifest.reason is R.ROLLBACK
    (ecu,) = manifest.ecus
    assert (ecu.version, ecu.slot, ecu.image_sha256) == (OLD, "a", sha(sample_image(HW, OLD)))


async def test_two_ecus_install_into_their_own_slots_and_one_manifest_names_both(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2), GATEWAY: server.release("5.0", 5, hardware_id=GATEWAY_HW)})
    agent = two_ecu_car(car)
    assert await agent.handle(server.notice()) is S.REMEDIED

    by_serial = {e.ecu_serial: e for e in only(car.link).ecus}
    assert by_serial[SERIAL].image_sha256 == sha(sample_image(HW, "2.0"))
    assert by_serial[GATEWAY].image_sha256 == sha(sample_image(GATEWAY_HW, "5.0"))
    assert (by_serial[SERIAL].version, by_serial[GATEWAY].version) == ("2.0", "5.0")
    for serial in (SERIAL, GATEWAY):
        slots = agent.slots[serial]
        assert isinstance(slots, FileSlots) and slots.directory.name == serial and slots.active_slot() == "b"


async def test_one_failing_ecu_puts_every_ecu_back_on_its_old_image_and_is_named(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2), GATEWAY: server.release("5.0", 5, hardware_id=GATEWAY_HW)})
    agent = two_ecu_car(car, health=FailsFor(GATEWAY))
    assert await agent.handle(server.notice()) is S.ROLLED_BACK

    assert GATEWAY in car.link.reports[-1].detail
    manifest = only(car.link)
    assert manifest.reason is R.ROLLBACK
    by_serial = {e.ecu_serial: e for e in manifest.ecus}
    assert by_serial[SERIAL].image_sha256 == sha(sample_image(HW, OLD))
    assert by_serial[GATEWAY].image_sha256 == sha(sample_image(GATEWAY_HW, "4.0"))
    assert {e.version for e in manifest.ecus} == {OLD, "4.0"}
    for serial in (SERIAL, GATEWAY):
        slots = agent.slots[serial]
        assert slots.active_slot() == slots.booted_slot() == "a" and slots.pending_try() is None


async def test_the_failure_report_names_the_failing_ecu_in_its_ecu_serial(car: Car, server: FakeServer) -> None:
    """The gateway (second assigned) fails: the report's ecu_serial is the gateway, not the first ECU."""
    server.assign({SERIAL: server.release("2.0", 2), GATEWAY: server.release("5.0", 5, hardware_id=GATEWAY_HW)})
    agent = two_ecu_car(car, health=FailsFor(GATEWAY))
    assert await agent.handle(server.notice()) is S.ROLLED_BACK

    failed = car.link.reports[-1]
    assert (failed.state, failed.ecu_serial, failed.installed_version) == (S.ROLLED_BACK, GATEWAY, "4.0")
    assert agent.journal.data.campaigns[failed.campaign_id].failed_ecu == GATEWAY  # kept across a restart


async def test_keep_successful_commits_the_healthy_ecu_and_only_the_failing_one_goes_back(
    car: Car, server: FakeServer
) -> None:
    """The recall's signed keep_successful policy: the main ECU keeps the fix, the gateway goes back."""
    assigned = {SERIAL: server.release("2.0", 2), GATEWAY: server.release("5.0", 5, hardware_id=GATEWAY_HW)}
    server.assign(assigned, ecu_failure_policy="keep_successful")
    agent = two_ecu_car(car, health=FailsFor(GATEWAY))
    assert await agent.handle(server.notice()) is S.FAILED

    failed = car.link.reports[-1]
    assert (failed.state, failed.ecu_serial, failed.reason) == (S.FAILED, GATEWAY, FailureReason.HEALTH_CHECK_FAILED)
    assert GATEWAY in failed.detail
    manifest = only(car.link)  # the mixed state: the fix on the main ECU, the old image on the gateway
    by_serial = {e.ecu_serial: e for e in manifest.ecus}
    assert (by_serial[SERIAL].version, by_serial[SERIAL].slot) == ("2.0", "b")
    assert by_serial[SERIAL].image_sha256 == sha(sample_image(HW, "2.0"))
    assert (by_serial[GATEWAY].version, by_serial[GATEWAY].slot) == ("4.0", "a")
    assert by_serial[GATEWAY].image_sha256 == sha(sample_image(GATEWAY_HW, "4.0"))
    assert agent.journal.data.installed[SERIAL] == ("2.0", 2) and agent.journal.data.installed[GATEWAY][0] == "4.0"
    for serial, slot in ((SERIAL, "b"), (GATEWAY, "a")):
        slots = agent.slots[serial]
        assert slots.active_slot() == slots.booted_slot() == slot and slots.pending_try() is None


async def test_a_manifest_goes_daily_on_simulated_time_and_an_idle_image_is_hashed_once(car: Car) -> None:
    clock = Clock()
    days = 3

    async def timer(seconds: float) -> None:  # the daily wait passes at once on the test's clock
        clock.now += timedelta(seconds=seconds)
        if sum(m.reason is R.DAILY for m in car.link.manifests) >= days:
            car.link.close()
        await asyncio.sleep(0)

    car.build(clock=clock, timer=timer)
    await car.agent.run()

    reasons = [m.reason for m in car.link.manifests]
    assert reasons[: days + 1] == [R.START] + [R.DAILY] * days
    counters = [m.counter for m in car.link.manifests]
    assert counters == list(range(1, len(counters) + 1))
    sent = [m.sent_at for m in car.link.manifests[: days + 1]]
    assert [b - a for a, b in pairwise(sent)] == [DAY] * days
    assert car.agent.meter.measured == 1  # the unchanged slot was not read again


async def test_the_counter_survives_a_restart_and_an_undelivered_manifest_is_sent_later(car: Car) -> None:
    car.link.online = False
    car.link.close()
    await car.agent.run()
    assert car.link.manifests == []
    pending = car.agent.journal.data.manifest
    assert pending is not None and pending.counter == 1
    assert car.agent.status()["manifest"] == {
        "counter": 1,
        "made_at": pending.sent_at.isoformat(),
        "undelivered": True,
    }  # what `vehicle-agent status` shows

    car.build()  # a restart: the journal keeps the counter and the pending manifest
    car.link.close()
    await car.agent.run()
    assert [m.counter for m in car.link.manifests] == [1, 2]
    assert car.agent.journal.data.manifest is None


async def test_a_tampered_slot_image_gives_another_hash(car: Car) -> None:
    car.link.close()
    await car.agent.run()
    genuine = only(car.link).ecus[0].image_sha256

    image = car.slots.directory / "slot_a.img"
    tampered = bytearray(image.read_bytes())
    tampered[-1] ^= 0xFF
    spare = image.with_name("flashed.img")  # a workshop's flash: new bytes in the running slot
    spare.write_bytes(bytes(tampered))
    os.replace(spare, image)
    assert await car.agent.send_manifest(R.REQUESTED)
    assert car.link.manifests[-1].ecus[0].image_sha256 == sha(bytes(tampered)) != genuine

    car.build()  # and after a restart, from the slot itself
    car.link.close()
    await car.agent.run()
    assert car.link.manifests[-1].ecus[0].image_sha256 == sha(bytes(tampered))


def test_the_journal_file_keeps_the_pending_manifest(tmp_path: Path, server: FakeServer) -> None:
    from vehicle_agent.journal import Journal

    journal = Journal(tmp_path / "journal.json", durable=False)
    manifest = VersionManifest(
        vin=VIN,
        counter=7,
        reason=R.DAILY,
        ecus=({"ecu_serial": SERIAL, "hardware_id": HW, "version": OLD},),
        sent_at=datetime(2026, 12, 4, tzinfo=UTC),
    )
    journal.queue_manifest(manifest, "2026-12-04T00:00:00+00:00")
    reloaded = Journal(tmp_path / "journal.json")
    assert reloaded.data.manifest == manifest and reloaded.data.manifest_counter == 7
    assert reloaded.next_manifest_counter() == 8
