"""The kill table (as Mender tests its client): SIGKILL the real agent at every boundary.

Each case runs the agent in a subprocess (:mod:`tests.vehicle_agent.kill_harness`), kills
it at one point, starts it again from the same state directory, and checks what a car
and its owner care about: a bootable committed slot holding the new image, the right
final state, and exactly one terminal report at the "server" once its duplicates are
folded the way the server folds them, by (campaign, VIN, attempt, state).

The boundary list is written out below and a clean run must emit exactly that list,
so a new journaled transition cannot slip by untested.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_bundles.bundle import build_bundle, sample_image
from firmware_bundles.messages import ReportState, encode
from vehicle_agent.installer import FileSlots
from vehicle_agent.journal import Journal

from .fakes import HW, SERIAL, VIN, FakeServer
from .kill_harness import Spec, dump_repository, reports_in, write_spec

ROOT = Path(__file__).resolve().parents[2]
S = ReportState
IMAGE_SIZE = 256 * 1024  # four slot-write chunks, 64 download chunks: enough places to cut
NEW_IMAGE = sample_image(HW, "2.0", size=IMAGE_SIZE)


def _step(state: ReportState) -> list[str]:
    return [f"step:{state.value}#1", f"sent:{state.value}#1", f"ack:{state.value}#1"]


# Every boundary of a clean update, in order. The owner's notice is logged with the
# downloading step; the slot is written and armed inside the installing step
# (boot:set_try); the rebooting step counts its attempt, boots the tried slot, commits it
# and records the installed version before remedied; the owner is then told the result,
# which is logged last (a restart before that tells them again). The version manifest is
# journaled at start and once the install is committed (sent ahead of the remedied report,
# or with it in one batch when the agent lingers); each is dropped from the journal once sent.
BOUNDARIES = [
    "manifest:start#1",
    "ack:manifest:start#1",
    *_step(S.NOTIFIED),
    *_step(S.DOWNLOADING),
    *_step(S.VERIFYING),
    *_step(S.INSTALLING),
    "boot:set_try#1",
    *_step(S.REBOOTING),
    "boot-attempt#1",
    "boot:reboot#1",
    "boot:commit#1",
    "installed#1",
    "manifest:install#1",
    "step:remedied#1",
    "ack:manifest:install#1",
    "sent:remedied#1",
    "ack:remedied#1",
    "record:remedied#1",
]

_rng = random.Random(20240605)  # seeded: the same offsets on every run
DOWNLOAD_OFFSETS = sorted(_rng.sample(range(1, IMAGE_SIZE), 5))
WRITE_OFFSETS = sorted(_rng.sample(range(1, IMAGE_SIZE), 5))


class Harness:
    """The harness's fork server: one Python start-up for the whole table."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.vehicle_agent.kill_harness", "--serve"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, spec_path: Path) -> int:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"{spec_path}\n")
        self._proc.stdin.flush()
        return int(self._proc.stdout.readline())

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


class Fleet:
    """One car's files: the served repository, its notice, its state and the server's report log."""

    def __init__(self, tmp_path: Path, server: FakeServer, harness: Harness) -> None:
        self.harness = harness
        self.tmp = tmp_path
        self.server = server
        self.state_dir = tmp_path / "car"
        self.repo = tmp_path / "repo.json"
        self.notices = tmp_path / "notices.jsonl"
        self.reports = tmp_path / "reports.jsonl"
        self.runs = 0

    def publish(self, campaign_id: int = 1, version: str = "2.0", counter: int = 2) -> None:
        image = sample_image(HW, version, size=IMAGE_SIZE)
        self.server.assign(
            {SERIAL: self.server.release(version, counter, bundle=build_bundle(image, HW, version, counter))}
        )
        dump_repository(self.server, self.repo)
        with self.notices.open("ab") as out:
            out.write(encode(self.server.notice(campaign_id)) + b"\n")

    def run(self, *, expect_killed: bool = False, **faults: object) -> list[str]:
        """Start the agent; return the boundary labels it passed."""
        self.runs += 1
        labels = self.tmp / f"labels-{self.runs}.txt"
        spec_path = self.tmp / f"spec-{self.runs}.json"
        spec = Spec(self.state_dir, VIN, self.repo, self.notices, self.reports, labels=labels, **faults)  # type: ignore[arg-type]
        write_spec(spec_path, spec)
        code = self.harness.run(spec_path)
        expected = -9 if expect_killed else 0
        assert code == expected, spec_path.with_suffix(".err").read_text(errors="replace")[-3000:]
        return labels.read_text().split() if labels.exists() else []

    def terminal_reports(self) -> set[tuple[int, str, int, str]]:
        """What the server keeps: one event per (campaign, VIN, attempt, state)."""
        events = {(r.campaign_id, r.vin, r.attempt, r.state.value) for r in reports_in(self.reports)}
        return {e for e in events if ReportState(e[3]).terminal}

    def assert_updated(self) -> None:
        """Bootable, right state, exactly one terminal report."""
        slots = FileSlots(self.state_dir / "slots" / SERIAL)
        assert slots.booted_slot() == slots.active_slot() == "b"
        assert slots.pending_try() is None
        assert slots.slot_sha256("b") == hashlib.sha256(NEW_IMAGE).hexdigest()
        journal = Journal(self.state_dir / "journal.json")
        assert journal.data.campaigns[1].state is S.REMEDIED
        assert journal.data.installed[SERIAL] == ("2.0", 2)
        assert journal.data.outbox == []
        assert self.terminal_reports() == {(1, VIN, 1, "remedied")}


@pytest.fixture
def fleet(tmp_path: Path, harness: Harness) -> Fleet:
    fleet = Fleet(tmp_path, FakeServer(), harness)
    fleet.publish()
    return fleet


def test_a_clean_run_passes_exactly_the_listed_boundaries(fleet: Fleet) -> None:
    assert fleet.run() == BOUNDARIES
    fleet.assert_updated()


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_killed_at_every_boundary_the_restart_finishes_the_update(fleet: Fleet, boundary: str) -> None:
    passed = fleet.run(kill_at=boundary, expect_killed=True)
    assert passed[-1] == boundary
    fleet.run()
    fleet.assert_updated()


@pytest.mark.parametrize("offset", DOWNLOAD_OFFSETS)
def test_killed_while_downloading(fleet: Fleet, offset: int) -> None:
    fleet.run(kill_download_at=offset, expect_killed=True)
    fleet.run()
    fleet.assert_updated()


@pytest.mark.parametrize("offset", WRITE_OFFSETS)
def test_killed_while_writing_the_slot(fleet: Fleet, offset: int) -> None:
    fleet.run(kill_write_at=offset, expect_killed=True)
    slots = FileSlots(fleet.state_dir / "slots" / SERIAL)
    assert slots.booted_slot() == slots.active_slot() == "a"  # the running slot was never touched
    assert slots.pending_try() is None  # a half-written slot is never armed
    fleet.run()
    fleet.assert_updated()


def test_killed_twice_in_a_row(fleet: Fleet) -> None:
    fleet.run(kill_at="boot:reboot#1", expect_killed=True)
    fleet.run(kill_at="boot-attempt#1", expect_killed=True)
    fleet.run()
    fleet.assert_updated()


def test_a_report_that_cannot_be_sent_survives_the_kill(fleet: Fleet) -> None:
    """No coverage until after a reboot: the outbox is on disk and goes out after the restart."""
    passed = fleet.run(offline=True, kill_at="step:remedied#1", expect_killed=True)
    assert not any(label.startswith("sent:") for label in passed)
    assert fleet.terminal_reports() == set()
    fleet.run()
    fleet.assert_updated()
    states = [r.state for r in reports_in(fleet.reports)]
    assert states[:6] == [S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING, S.REMEDIED]


def test_killed_while_rolling_back_a_failed_health_check(fleet: Fleet) -> None:
    fleet.run(healthy=False, kill_at="boot:reboot#1", expect_killed=True)
    fleet.run(healthy=False)
    slots = FileSlots(fleet.state_dir / "slots" / SERIAL)
    assert slots.booted_slot() == slots.active_slot() == "a"
    assert slots.read_header() == {"hardware_id": HW, "version": "1.0"}
    assert fleet.terminal_reports() == {(1, VIN, 1, "rolled_back")}
    rolled_back = [r for r in reports_in(fleet.reports) if r.state is S.ROLLED_BACK]
    assert all(r.reason is not None and r.reason.value == "health_check_failed" for r in rolled_back)
    assert "rolled back" in rolled_back[0].detail


def test_killed_after_the_commit_and_in_each_later_boot_attempt(fleet: Fleet) -> None:
    """The committed slot runs the fix: more boot attempts than the limit never make it a rollback.

    Killed once after the commit (before ``installed`` and ``remedied`` are journaled), then
    right after each of the next two boot-attempt increments: the attempt count passes the
    limit (3), yet the car runs the fix, so the restart reports remedied and nothing else.
    """
    fleet.run(kill_at="boot:commit#1", expect_killed=True)
    fleet.run(kill_at="boot-attempt#1", expect_killed=True)
    fleet.run(kill_at="boot-attempt#1", expect_killed=True)
    passed = fleet.run()
    assert not any(label.startswith("boot:") for label in passed)  # no reboot, no rollback of the fix
    fleet.assert_updated()
    assert all(r.state is not S.ROLLED_BACK for r in reports_in(fleet.reports))


def test_with_a_linger_killed_at_every_send_the_restart_finishes_the_update(tmp_path: Path, harness: Harness) -> None:
    """Steps sent in batches by the lingering sender: a kill at any send or acknowledgement of a
    clean lingering run (the labels taken from that run) still ends updated, one terminal report."""

    def fresh(name: str) -> Fleet:
        (tmp_path / name).mkdir()
        fleet = Fleet(tmp_path / name, FakeServer(), harness)
        fleet.publish()
        return fleet

    clean = fresh("clean")
    passed = clean.run(linger=0.5)
    clean.assert_updated()
    cuts = [label for label in passed if label.startswith(("sent:", "ack:"))]
    assert {label.split(":")[1].split("#")[0] for label in cuts} == {s.value for s in S if not s.terminal} - {
        "deferred",
        "consented",
    } | {"remedied", "manifest"}
    # the install manifest rides in the batch with the remedied step: dropped with it, in one write
    assert passed.index("ack:manifest:install#1") == passed.index("ack:remedied#1") + 1
    for n, boundary in enumerate(cuts):
        fleet = fresh(f"cut-{n}")
        assert fleet.run(kill_at=boundary, expect_killed=True, linger=0.5)[-1] == boundary
        fleet.run(linger=0.5)
        fleet.assert_updated()
