"""rollout/transitions.py on its own: every move checked, recorded once, the bulk forms touch only what they name."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from ota_server.db.models import Base, CampaignEvent, CampaignVehicle
from ota_server.domain.states import Cause, IllegalTransition, VinState
from ota_server.rollout import transitions

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
VINS = ["1HGCM82633A004352", "1HGCM82633A004353"]


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        transitions.enroll(
            session,
            [
                {"campaign_id": 1, "vin": vin, "nonce": f"n{i}", "attempt": 0, "updated_at": T0, "wave": 0}
                for i, vin in enumerate(VINS)
            ],
        )
        yield session
    engine.dispose()


def _car(session: Session, vin: str = VINS[0]) -> CampaignVehicle:
    cv = session.get(CampaignVehicle, (1, vin))
    assert cv is not None
    return cv


def _events(session: Session) -> list[tuple[str, str, str]]:
    rows = session.execute(
        select(CampaignEvent.vin, CampaignEvent.state, CampaignEvent.source).order_by(CampaignEvent.id)
    )
    return [(vin, state, source) for vin, state, source in rows]


def test_an_enrolled_car_is_pending(session: Session) -> None:
    assert _car(session).state == VinState.PENDING.value
    assert _events(session) == []


def test_a_move_the_state_machine_forbids_changes_nothing(session: Session) -> None:
    cv = _car(session)
    with pytest.raises(IllegalTransition):
        transitions.move(session, cv, VinState.REMEDIED, Cause.OPERATOR, T0)  # only the car reports remedied
    assert cv.state == VinState.PENDING.value
    assert _events(session) == []


def test_a_timeout_then_a_retry_each_leave_one_event(session: Session) -> None:
    cv = _car(session)
    transitions.move(session, cv, VinState.TIMED_OUT, Cause.TIMEOUT, T0, reason="timed_out")
    later = T0 + timedelta(minutes=5)
    nonce = transitions.retry(session, cv, later)
    session.flush()
    assert (cv.state, cv.retries, cv.notified_at, cv.nonce) == (VinState.PENDING.value, 1, later, nonce)
    assert nonce != "n0"
    assert _events(session) == [(VINS[0], "timed_out", "timeout"), (VINS[0], "pending", "retry")]


def test_the_same_step_twice_is_one_event(session: Session) -> None:
    cv = _car(session)
    transitions.move(session, cv, VinState.WITHDRAWN, Cause.CANCEL, T0)
    session.flush()
    transitions._record_event(session, cv, Cause.CANCEL.value, T0, reason=None, detail=None)
    session.flush()
    assert _events(session) == [(VINS[0], "withdrawn", "cancel")]


def test_mark_notified_and_published_touch_only_the_cars_named(session: Session) -> None:
    transitions.mark_notified(session, 1, [VINS[0]], T0)
    transitions.mark_published(session, 1, [VINS[0]], T0)
    session.expire_all()
    assert (_car(session).notified_at, _car(session).notice_published_at) == (T0, T0)
    other = _car(session, VINS[1])
    assert (other.notified_at, other.notice_published_at) == (None, None)
    assert session.scalar(select(func.count()).select_from(CampaignEvent)) == 0
