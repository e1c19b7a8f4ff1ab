"""The campaign engine with an in-memory fleet: it asks the Fleet port, never a service.

The coordinator ticks a two-car campaign on SQLite: it asks the fake fleet to assign and word
the notices, dispatches them, marks the cars notified; once both report remedied, the next
tick completes the campaign.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from firmware_bundles.messages import CampaignNotice, ReportState
from ota_server.db.models import Base, Campaign, CampaignVehicle, Recall, Vehicle
from ota_server.domain.states import CampaignStatus
from ota_server.rollout import notifying, transitions
from ota_server.rollout.campaign_tick import TickResult
from ota_server.rollout.coordinator import Coordinator
from ota_server.rollout.fleet import Encoded, Outbound, Sendable

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
VINS = ["1HGCM82633A004352", "1HGCM82633A004353"]
NONCES = ["nonce-of-the-first-car", "nonce-of-the-second-car"]


class FakeFleet:
    def __init__(self) -> None:
        self.assigned: list[str] = []
        self.written: list[str] = []  # the assignments the tick had written

    def join_late(self, session: Session, campaign: Campaign, recall: Recall, now: datetime) -> int:
        return 0

    def assign(
        self, session: Session, campaign: Campaign, recall: Recall, vins: Sequence[str], now: datetime
    ) -> Callable[[], None]:
        self.assigned += vins
        return lambda: self.write(list(vins))

    def write(self, vins: list[str]) -> None:
        self.written += vins

    def notice_maker(
        self, recall: Recall, campaign: Campaign, cars: Sequence[tuple[str, str]], now: datetime
    ) -> Callable[[], list[Sendable]]:
        fields = {
            "campaign_id": campaign.id,
            "recall_number": recall.campaign_number,
            "title": recall.title,
            "safety_recall": recall.safety_recall,
            "repo_url": "http://ota.test/repo",
            "issued_at": now,
        }
        return lambda: [CampaignNotice(vin=vin, nonce=nonce, **fields) for vin, nonce in cars]


def _message(sent: Sendable) -> Outbound:
    return sent.message if isinstance(sent, Encoded) else sent


def _world(cars: int = 2) -> sessionmaker[Session]:
    vins = VINS if cars == len(VINS) else [f"1HGCM82633A{n:06d}" for n in range(cars)]
    nonces = NONCES if cars == len(VINS) else [f"nonce-of-car-{n:04d}" for n in range(cars)]
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as session:
        for vin in vins:
            session.add(Vehicle(vin=vin, model="M", model_year=2024, production_date=date(2024, 1, 1), created_at=T0))
        session.add(
            Recall(
                id=1,
                campaign_number="26V-001",
                title="Brake controller",
                defect="d",
                safety_risk="r",
                remedy="m",
                release_id=1,
                population={},
                created_at=T0,
            )
        )
        session.add(
            Campaign(
                id=1,
                recall_id=1,
                release_id=1,
                population=cars,
                launch_population=cars,
                launched_at=T0,
                status=CampaignStatus.ACTIVE,
                current_wave=0,
                error_baseline=0,
                status_changed_at=T0,
                kind="remedy",
            )
        )
        session.flush()
        transitions.enroll(
            session,
            [
                {"campaign_id": 1, "vin": vin, "nonce": nonces[i], "attempt": 0, "updated_at": T0, "wave": 0}
                for i, vin in enumerate(vins)
            ],
        )
        session.commit()
    return sessions


def test_the_engine_notifies_and_completes_through_the_fleet_port() -> None:
    sessions = _world()
    fleet = FakeFleet()
    sent: list[Sendable] = []
    coordinator = Coordinator(sessions, fleet, lambda: T0, sent.extend)

    first = coordinator.tick_sync()
    assert (first.notified, first.faulted) == (2, [])
    assert sorted(fleet.assigned) == sorted(fleet.written) == VINS  # what was signed is written
    assert sorted((m.vin, m.nonce) for m in map(_message, first.messages)) == list(zip(VINS, NONCES, strict=True))
    with sessions() as session:
        cars = [session.get(CampaignVehicle, (1, vin)) for vin in VINS]
        assert [cv.notified_at for cv in cars if cv is not None] == [T0, T0]
        for cv in cars:
            assert cv is not None
            transitions.by_car_report(
                cv, ReportState.REMEDIED, attempt=1, deferrals=0, reason=None, detail=None, ecu_serial=None, at=T0
            )
        session.commit()

    second = coordinator.tick_sync()
    assert second.notified == 0
    with sessions() as session:
        campaign = session.get(Campaign, 1)
        assert campaign is not None and campaign.status == CampaignStatus.COMPLETED


class GatedFleet(FakeFleet):
    """Records each tick's batch; the first assign waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def assign(
        self, session: Session, campaign: Campaign, recall: Recall, vins: Sequence[str], now: datetime
    ) -> Callable[[], None]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(vins))
        return super().assign(session, campaign, recall, vins, now)


async def test_the_periodic_tick_never_splits_a_launch_that_is_carrying_on() -> None:
    """Found at 30,000 cars (issue 19): the periodic tick, waiting on the lock while a launch's batch was
    prepared, ran next between the launch's batches (then also resetting their growth)."""
    sessions = _world(cars=10)
    fleet = GatedFleet()
    coordinator = Coordinator(sessions, fleet, lambda: T0, lambda messages: None, max_per_tick=2)
    ticks = 0
    tick_sync = coordinator.tick_sync

    def counted(campaign_ids: Collection[int] | None = None) -> TickResult:
        nonlocal ticks
        ticks += 1
        return tick_sync(campaign_ids)

    coordinator.tick_sync = counted  # type: ignore[method-assign]
    coordinator.start(0)
    try:
        coordinator.poke()  # a launch: its first batch of 2, then carrying on with the same cap
        assert await asyncio.to_thread(fleet.entered.wait, 10)
        periodic = asyncio.ensure_future(coordinator.periodic_tick())
        await asyncio.sleep(0.05)
        fleet.gate.set()
        assert await asyncio.wait_for(periodic, 10) is None  # the launch's ticks cover it
        await coordinator.idle()
        assert fleet.batches == [2, 2, 2, 2, 2]
        assert ticks == 6  # five batches and the one that found nobody left: no periodic tick in between
        assert await coordinator.periodic_tick() is not None  # nothing running: the periodic tick runs
    finally:
        fleet.gate.set()
        await coordinator.stop()


class ThreadNotingFleet(FakeFleet):
    """Notes the thread its notices are made in (and sets ``making`` as they start); can fail making them."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.made_in: list[str] = []
        self.making = threading.Event()
        self.fail = fail

    def notice_maker(
        self, recall: Recall, campaign: Campaign, cars: Sequence[tuple[str, str]], now: datetime
    ) -> Callable[[], list[Sendable]]:
        make = super().notice_maker(recall, campaign, cars, now)

        def noted() -> list[Sendable]:
            self.making.set()
            self.made_in.append(threading.current_thread().name)
            if self.fail:
                raise RuntimeError("a notice could not be made")
            return make()

        return noted


def test_a_large_batch_is_made_beside_the_marking_and_sent_as_the_small_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifying, "MAKE_ALONGSIDE", 2)  # two cars are "a launch's batch" here
    sessions = _world()
    fleet = ThreadNotingFleet()
    result = Coordinator(sessions, fleet, lambda: T0, lambda messages: None).tick_sync()
    assert fleet.made_in and fleet.made_in[0].startswith("ota-notices")  # not the tick's thread
    assert result.notified == 2
    assert sorted((m.vin, m.nonce) for m in map(_message, result.messages)) == list(zip(VINS, NONCES, strict=True))
    with sessions() as session:
        assert [session.get(CampaignVehicle, (1, vin)).notified_at for vin in VINS] == [T0, T0]  # type: ignore[union-attr]


def test_a_notice_that_cannot_be_made_beside_the_marking_leaves_nothing_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifying, "MAKE_ALONGSIDE", 2)
    sessions = _world()
    result = Coordinator(sessions, ThreadNotingFleet(fail=True), lambda: T0, lambda messages: None).tick_sync()
    assert result.faulted == [1] and result.notified == 0 and result.messages == []
    with sessions() as session:
        assert [session.get(CampaignVehicle, (1, vin)).notified_at for vin in VINS] == [None, None]  # type: ignore[union-attr]


class OverlapNotingFleet(ThreadNotingFleet):
    """Its chains' writing waits (a while) for the notices to be under way, and notes whether they were;
    can fail writing."""

    def __init__(self, fail_writing: bool = False) -> None:
        super().__init__()
        self.written_while_making: list[bool] = []
        self.fail_writing = fail_writing

    def write(self, vins: list[str]) -> None:
        self.written_while_making.append(self.making.wait(5))
        if self.fail_writing:
            raise RuntimeError("the chains could not be written")
        super().write(vins)


def test_a_large_batchs_chains_are_written_while_its_notices_are_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch's tick made its notices only after PostgreSQL had written its 90,000 Director files
    (~0.4 s of 30,000 cars' path to the first notice, issue 19); now the two overlap."""
    monkeypatch.setattr(notifying, "MAKE_ALONGSIDE", 2)
    sessions = _world()
    fleet = OverlapNotingFleet()
    result = Coordinator(sessions, fleet, lambda: T0, lambda messages: None).tick_sync()
    assert fleet.written_while_making == [True]
    assert sorted(fleet.written) == VINS and result.notified == 2 and len(result.messages) == 2


def test_chains_that_cannot_be_written_leave_nothing_marked_or_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifying, "MAKE_ALONGSIDE", 2)
    sessions = _world()
    sent: list[Sendable] = []
    result = Coordinator(sessions, OverlapNotingFleet(fail_writing=True), lambda: T0, sent.extend).tick_sync()
    assert result.faulted == [1] and result.notified == 0 and result.messages == [] and sent == []
    with sessions() as session:
        assert [session.get(CampaignVehicle, (1, vin)).notified_at for vin in VINS] == [None, None]  # type: ignore[union-attr]
