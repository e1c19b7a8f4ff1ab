"""The journal: atomic, durable writes, and a start from whatever the storage left behind."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_bundles.messages import ReportState, StatusReport
from vehicle_agent import journal as journal_module
from vehicle_agent.journal import CampaignRecord, Journal

from .conftest import Car
from .fakes import SERIAL, VIN, FakeServer

S = ReportState


def report(state: ReportState) -> StatusReport:
    return StatusReport(campaign_id=1, vin=VIN, nonce="n" * 16, state=state, sent_at=datetime.now(UTC))


def test_each_write_is_fsynced_renamed_and_the_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "journal.json")
    journal.record(CampaignRecord(1, "n", S.NOTIFIED))
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(
            (
                "rename",
                Path(src).name.split(".")[1] if Path(src).name.startswith(".") else Path(src).name,
                Path(dst).name,
            )
        )
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    journal.record(CampaignRecord(1, "n", S.DOWNLOADING))

    assert events[0] == ("rename", "journal.json", "journal.json.prev")  # the fallback copy
    tmp_fsync = events[1]
    assert tmp_fsync[0] == "fsync" and tmp_fsync[1].startswith(".journal.json.")  # the new bytes, on disk first
    assert events[2] == ("rename", "journal", "journal.json")  # then renamed over
    assert events[3] == ("fsync", tmp_path.name)  # and the rename made durable
    assert len(events) == 4


def test_a_step_and_its_report_are_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(tmp_path / "journal.json")
    writes: list[Path] = []
    real = journal_module.write_atomically

    def counting(path: Path, data: bytes, *, durable: bool = True, temp: str | None = None) -> None:
        writes.append(path)
        real(path, data, durable=durable, temp=temp)

    monkeypatch.setattr(journal_module, "write_atomically", counting)
    journal.record(CampaignRecord(1, "n", S.REMEDIED), report(S.REMEDIED))
    assert len(writes) == 1
    reloaded = Journal(tmp_path / "journal.json")
    assert reloaded.data.campaigns[1].state is S.REMEDIED
    assert [r.state for r in reloaded.data.outbox] == [S.REMEDIED]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"\x00" * len(raw), id="zeroed"),
        pytest.param(lambda raw: raw.replace(b'"installing"', b'"instaling"'), id="bad-state"),
        pytest.param(lambda raw: b"[1, 2]", id="not-an-object"),
    ],
)
def test_a_damaged_journal_falls_back_to_the_previous_copy(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "journal.json"
    journal = Journal(path)
    journal.record(CampaignRecord(1, "n", S.VERIFYING))
    journal.record(CampaignRecord(1, "n", S.INSTALLING))
    assert callable(damage)
    path.write_bytes(damage(path.read_bytes()))

    reloaded = Journal(path)

    assert reloaded.recovered
    assert reloaded.data.campaigns[1].state is S.VERIFYING  # one step back: the agent redoes it
    assert (tmp_path / "journal.json.corrupt").exists()  # kept for a post-mortem
    reloaded.record(CampaignRecord(1, "n", S.INSTALLING))
    assert Journal(path).data.campaigns[1].state is S.INSTALLING


def test_power_cut_between_the_two_renames_uses_the_fallback(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    Journal(path).record(CampaignRecord(1, "n", S.VERIFYING))
    os.replace(path, tmp_path / "journal.json.prev")
    assert Journal(path).data.campaigns[1].state is S.VERIFYING


def test_both_copies_unreadable_starts_empty_instead_of_crashing(tmp_path: Path) -> None:
    (tmp_path / "journal.json").write_bytes(b"{torn")
    (tmp_path / "journal.json.prev").write_bytes(b"\xff\xfe")
    journal = Journal(tmp_path / "journal.json")
    assert journal.recovered
    assert journal.data.campaigns == {}


def test_a_journal_from_an_unknown_version_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "journal.json").write_text('{"journal_version": 99}')
    with pytest.raises(ValueError, match="unknown journal version"):
        Journal(tmp_path / "journal.json")


async def test_the_agent_starts_on_a_torn_journal_and_finishes_the_update(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    notice = server.notice()
    car.build(on_report=_stop_at(S.INSTALLING))
    with pytest.raises(_Stop):
        await car.agent.handle(notice)
    path = car.state_dir / "journal.json"
    path.write_bytes(path.read_bytes()[:40])  # the storage tore the newest copy

    car.build()
    assert car.agent.journal.recovered
    assert await car.agent.resume() == [S.REMEDIED]
    assert car.running_version() == "2.0"


class _Stop(BaseException):
    pass


def _stop_at(state: ReportState) -> Callable[[StatusReport], None]:
    def on_report(r: StatusReport) -> None:
        if r.state is state:
            raise _Stop

    return on_report


def test_the_file_holds_every_campaign_and_report_as_written(tmp_path: Path) -> None:
    """Unchanged parts are encoded once and kept: what is on disk must still be the whole, current journal."""
    journal = Journal(tmp_path / "journal.json", durable=False)
    first, second = report(S.NOTIFIED), report(S.DOWNLOADING)
    journal.record(CampaignRecord(1, "n", S.NOTIFIED), first)
    journal.record(CampaignRecord(2, "m", S.NOTIFIED))
    journal.enqueue(second)
    journal.enqueue(second)  # the same report twice is kept twice
    journal.acknowledge(first)
    # a new record replaces the old; text beyond ASCII is written as UTF-8 and read back the same
    journal.record(CampaignRecord(1, "n", S.DOWNLOADING, bundle_bytes=7, detail="débit trop faible ✓"))
    journal.set_installed(SERIAL, "2.0", 2, journal_module.InstalledTarget("ecu-2.0.bundle", "ab" * 32, 9))
    journal.raise_floor(SERIAL, 2)
    journal.save()
    expected = {
        "journal_version": journal_module.JOURNAL_VERSION,
        "campaigns": {str(k): v.to_json() for k, v in journal.data.campaigns.items()},
        "installed": {SERIAL: ["2.0", 2]},
        "floors": {SERIAL: 2},
        "outbox": [r.model_dump(mode="json", exclude_none=True) for r in (second, second)],
        "images": {SERIAL: {"path": "ecu-2.0.bundle", "sha256": "ab" * 32, "length": 9}},
        "manifest_counter": 0,
        "manifest_at": "",
        "manifest": None,
    }
    assert json.loads((tmp_path / "journal.json").read_bytes()) == expected
    reloaded = Journal(tmp_path / "journal.json")
    assert reloaded.data.campaigns[1].state is S.DOWNLOADING and reloaded.data.campaigns[1].bundle_bytes == 7
    assert reloaded.data.campaigns[1].detail == "débit trop faible ✓"
    assert [r.state for r in reloaded.data.outbox] == [S.DOWNLOADING, S.DOWNLOADING]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json", "journal.json.prev"]  # no temp file left


def test_saves_from_two_threads_never_tear_the_file(tmp_path: Path) -> None:
    """The agent saves from its event loop and its worker thread; the temp file has one name."""
    journal = Journal(tmp_path / "journal.json", durable=False)
    journal.record(CampaignRecord(1, "n" * 4000, S.NOTIFIED))  # large enough for writes to interleave
    errors: list[BaseException] = []

    def saver() -> None:
        try:
            for _ in range(300):
                journal.save()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=saver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for name in ("journal.json", "journal.json.prev"):
        assert json.loads((tmp_path / name).read_bytes())["campaigns"]["1"]["nonce"] == "n" * 4000
