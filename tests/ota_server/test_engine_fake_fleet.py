"""The campaign engine with an in-memory fleet: it asks the Fleet port, never a service.

The coordinator ticks a two-car campaign on SQLite: it asks the fake fleet to assign and word
the notices, dispatches them, marks the cars notified; once both report remedied, the next
tick completes the campaign.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from firmware_bundles.messages import CampaignNotice, ReportState
from ota_server.db.models import Base, Campaign, CampaignVehicle, Recall, Vehicle
from ota_server.domain.states import CampaignStatus
from ota_server.rollout import transitions
from ota_server.rollout.coordinator import Coordinator
from ota_server.rollout.fleet import Outbound

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
VINS = ["1HGCM82633A004352", "1HGCM82633A004353"]
NONCES = ["nonce-of-the-first-car", "nonce-of-the-second-car"]


class FakeFleet:
    def __init__(self) -> None:
        self.assigned: list[str] = []

    def join_late(self, session: Session, campaign: Campaign, recall: Recall, now: datetime) -> int:
        return 0

    def assign(self, session: Session, campaign: Campaign, recall: Recall, vins: Sequence[str], now: datetime) -> None:
        self.assigned += vins

    def notices(
        self, recall: Recall, campaign: Campaign, cars: Sequence[tuple[str, str]], now: datetime
    ) -> list[Outbound]:
        return [
            CampaignNotice(
                campaign_id=campaign.id,
                vin=vin,
                nonce=nonce,
                recall_number=recall.campaign_number,
                title=recall.title,
                safety_recall=recall.safety_recall,
                repo_url="http://ota.test/repo",
                issued_at=now,
            )
            for vin, nonce in cars
        ]


def _world() -> sessionmaker[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as session:
        for vin in VINS:
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
                population=2,
                launch_population=2,
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
                {"campaign_id": 1, "vin": vin, "nonce": NONCES[i], "attempt": 0, "updated_at": T0, "wave": 0}
                for i, vin in enumerate(VINS)
            ],
        )
        session.commit()
    return sessions


def test_the_engine_notifies_and_completes_through_the_fleet_port() -> None:
    sessions = _world()
    fleet = FakeFleet()
    sent: list[Outbound] = []
    coordinator = Coordinator(sessions, fleet, lambda: T0, sent.extend)

    first = coordinator.tick_sync()
    assert (first.notified, first.faulted) == (2, [])
    assert sorted(fleet.assigned) == VINS
    assert sorted((m.vin, m.nonce) for m in first.messages) == list(zip(VINS, NONCES, strict=True))
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
