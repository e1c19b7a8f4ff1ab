"""Report batches: consecutive steps within ``report_linger_s`` go as one signed message.

What the server must get is unchanged: every step, in order, signed by the car's key, none
lost at a power cut; only the number of messages (and signatures) falls. Linger 0 is the
agent before batches: each step alone, at once, signed.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_bundles.messages import (
    MAX_BATCH_REPORTS,
    MAX_MESSAGE_BYTES,
    EcuManifest,
    ManifestReason,
    ReportState,
    StatusReport,
    VersionManifest,
    encode,
)
from firmware_bundles.report_signing import generate_report_key, private_key_pem, sign_report, verify_report
from vehicle_agent.config import (
    DEFAULT_REPORT_LINGER_S,
    config_from_agent_config,
    load_config,
    write_config,
)
from vehicle_agent.errors import ConfigError

from .conftest import Car
from .fakes import SERIAL, VIN, FakeServer
from .test_campaign_gate import until

S = ReportState
LINGER = 0.75
EVERY_STEP = [S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING, S.REMEDIED]
KEY = generate_report_key()


@pytest.fixture(autouse=True)
def released(server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})


class HeldLinger:
    """The agent's sleep: a linger waits until the test lets it go, any other wait passes at once."""

    def __init__(self, car: Car) -> None:
        self._car = car
        self.go = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        if math.isclose(seconds, LINGER):
            await self.go.wait()
            self.go.clear()
        else:
            await self._car.time.sleep(seconds)


def lingering(car: Car, linger: float = LINGER) -> HeldLinger:
    held = HeldLinger(car)
    config = replace(car.server.agent_config(car.state_dir), report_key=private_key_pem(KEY), report_linger_s=linger)
    car.build(config=config, sleep=held)
    return held


def _step(state: ReportState, detail: str = "") -> StatusReport:
    return StatusReport(campaign_id=1, vin=VIN, nonce="n" * 24, state=state, detail=detail, sent_at=datetime.now(UTC))


async def test_steps_within_the_linger_go_as_one_batch_signed_by_the_car(car: Car, server: FakeServer) -> None:
    held = lingering(car)
    car.link.deliver(server.notice())
    running = asyncio.create_task(car.agent.run())
    await until(lambda: (c := car.agent.journal.campaign(1)) is not None and c.state is S.REMEDIED)
    assert car.link.reports == []  # all six wait in the journal's outbox for the linger
    assert [r.state for r in car.agent.journal.data.outbox] == EVERY_STEP
    held.go.set()
    await until(lambda: len(car.link.reports) == len(EVERY_STEP))
    car.link.close()
    await running

    assert len(car.link.batches) == 1
    batch = car.link.batches[0]
    verify_report(batch, KEY.public_key)  # one signature over all six
    assert [r.state for r in batch.reports] == EVERY_STEP
    assert all(r.signature is None for r in batch.reports)
    # the install manifest rides in the same signed batch (the server records it after the steps)
    assert batch.manifest is not None and batch.manifest.reason is ManifestReason.INSTALL
    assert batch.manifest.signature is None and batch.manifest.vin == VIN
    assert [m.reason for m in car.link.manifests] == [ManifestReason.START, ManifestReason.INSTALL]
    assert car.agent.journal.data.outbox == [] and car.agent.journal.data.manifest is None


async def test_without_a_linger_each_step_goes_alone_signed(car: Car, server: FakeServer) -> None:
    lingering(car, linger=0.0)
    car.link.deliver(server.notice())
    car.link.close()
    await car.agent.run()
    assert car.link.batches == []
    assert [r.state for r in car.link.reports] == EVERY_STEP
    for report in car.link.reports:
        verify_report(report, KEY.public_key)
    for manifest in car.link.manifests:  # each alone, signed by the car
        verify_report(manifest, KEY.public_key)
    assert [m.reason for m in car.link.manifests] == [ManifestReason.START, ManifestReason.INSTALL]


def _big_manifest(counter: int) -> VersionManifest:
    """A manifest that fits a message alone but not with a step (32 ECUs, target paths grown to fit)."""
    for path_length in range(250, 0, -1):
        ecus = tuple(
            EcuManifest(
                ecu_serial=f"ECU-{n:02d}",
                hardware_id="hw-" + "h" * 50,
                version="2.0",
                target_path="t" * path_length + f"{n:02d}",
                target_sha256="a" * 64,
                image_sha256="b" * 64,
            )
            for n in range(32)
        )
        manifest = sign_report(
            VersionManifest(
                vin=VIN,
                counter=counter,
                reason=ManifestReason.INSTALL,
                agent_version="t",
                ecus=ecus,
                sent_at=datetime.now(UTC),
            ),
            KEY,
        )
        if len(encode(manifest)) <= MAX_MESSAGE_BYTES - 100:
            return manifest
    raise AssertionError("no size fits")


async def test_a_manifest_too_big_to_ride_along_goes_alone_first_then_the_steps(car: Car) -> None:
    lingering(car)
    manifest = _big_manifest(car.agent.journal.next_manifest_counter())
    assert MAX_MESSAGE_BYTES - 512 < len(encode(manifest)) <= MAX_MESSAGE_BYTES
    car.agent.journal.queue_manifest(manifest, datetime.now(UTC).isoformat())
    car.agent.journal.enqueue(_step(S.NOTIFIED))
    car.agent.journal.enqueue(_step(S.DOWNLOADING))
    await car.agent.flush()
    assert car.link.manifests == [manifest]  # as it was signed, alone
    [batch] = car.link.batches
    assert batch.manifest is None and [r.state for r in batch.reports] == [S.NOTIFIED, S.DOWNLOADING]
    assert car.agent.journal.data.manifest is None and car.agent.journal.data.outbox == []


async def test_a_manifest_with_one_step_shares_a_batch_and_a_link_down_keeps_both(car: Car) -> None:
    lingering(car)
    car.agent.journal.enqueue(_step(S.REMEDIED))
    await asyncio.to_thread(car.agent._reports.queue_manifest, ManifestReason.INSTALL)
    car.link.online = False
    await car.agent.flush()
    assert car.agent.journal.data.manifest is not None and len(car.agent.journal.data.outbox) == 1
    await car.link.reconnect()
    [batch] = car.link.batches
    verify_report(batch, KEY.public_key)
    assert batch.manifest is not None and [r.state for r in batch.reports] == [S.REMEDIED]
    assert car.agent.journal.data.manifest is None and car.agent.journal.data.outbox == []


async def test_a_power_cut_before_the_linger_loses_no_step_and_resends_none_once_taken(
    car: Car, server: FakeServer
) -> None:
    lingering(car)
    car.link.deliver(server.notice())
    running = asyncio.create_task(car.agent.run())
    await until(lambda: (c := car.agent.journal.campaign(1)) is not None and c.state is S.REMEDIED)
    running.cancel()  # the power goes while the steps wait for the linger
    await asyncio.gather(running, return_exceptions=True)
    assert car.link.reports == []

    lingering(car)  # powered again: the start sends what the journal holds, at once
    car.link.close()
    await car.agent.run()
    assert [r.state for r in car.link.reports] == EVERY_STEP
    assert len(car.link.batches) == 1 and car.agent.journal.data.outbox == []

    lingering(car)  # and once taken, nothing goes again
    car.link.close()
    await car.agent.run()
    assert car.link.reports == []


async def test_a_link_down_keeps_the_steps_and_sends_them_as_a_batch_when_back(car: Car, server: FakeServer) -> None:
    held = lingering(car)
    car.link.online = False
    car.link.deliver(server.notice())
    running = asyncio.create_task(car.agent.run())
    await until(lambda: (c := car.agent.journal.campaign(1)) is not None and c.state is S.REMEDIED)
    held.go.set()
    await until(lambda: not held.go.is_set())  # the lingering send ran, and the link refused it
    assert car.link.reports == [] and len(car.agent.journal.data.outbox) == len(EVERY_STEP)
    await car.link.reconnect()
    assert [r.state for r in car.link.reports] == EVERY_STEP and len(car.link.batches) == 1
    car.link.close()
    await running


async def test_a_step_an_older_agent_signed_is_still_delivered(car: Car) -> None:
    lingering(car)
    old = sign_report(_step(S.NOTIFIED), KEY)
    car.agent.journal.enqueue(old)
    await car.agent.flush()  # alone: sent as it was signed
    assert car.link.reports == [old]

    car.agent.journal.enqueue(sign_report(_step(S.NOTIFIED), KEY))
    car.agent.journal.enqueue(_step(S.DOWNLOADING))
    await car.agent.flush()  # with another step: in one batch, signed by it
    batch = car.link.batches[-1]
    verify_report(batch, KEY.public_key)
    assert [r.state for r in batch.reports] == [S.NOTIFIED, S.DOWNLOADING]


@pytest.mark.parametrize(("steps", "detail"), [(MAX_BATCH_REPORTS + 8, ""), (30, "x" * 1000)])
async def test_a_batch_never_passes_its_caps(car: Car, steps: int, detail: str) -> None:
    lingering(car)
    for _ in range(steps):
        car.agent.journal.enqueue(_step(S.DEFERRED, detail))
    await car.agent.flush()
    assert len(car.link.reports) == steps and len(car.link.batches) >= 2
    for batch in car.link.batches:
        assert len(batch.reports) <= MAX_BATCH_REPORTS
        assert len(encode(batch)) <= MAX_MESSAGE_BYTES
    assert car.agent.journal.data.outbox == []


def test_the_linger_is_read_from_agent_toml_and_checked(server: FakeServer, tmp_path: Path) -> None:
    made = config_from_agent_config(server.agent_config_doc(), tmp_path / "state")
    assert math.isclose(made.report_linger_s, DEFAULT_REPORT_LINGER_S)
    path = tmp_path / "agent.toml"
    write_config(made, path)
    text = path.read_text()
    assert math.isclose(load_config(path).report_linger_s, DEFAULT_REPORT_LINGER_S)
    path.write_text(text.replace("report_linger_s = 1", "report_linger_s = 0"))
    assert load_config(path).report_linger_s == 0
    path.write_text("\n".join(line for line in text.splitlines() if "report_linger_s" not in line))
    assert math.isclose(load_config(path).report_linger_s, DEFAULT_REPORT_LINGER_S)  # absent: the default
    for bad in ("-1", "61", "true", '"soon"'):
        path.write_text(text.replace("report_linger_s = 1", f"report_linger_s = {bad}"))
        with pytest.raises(ConfigError, match="report_linger_s"):
            load_config(path)
