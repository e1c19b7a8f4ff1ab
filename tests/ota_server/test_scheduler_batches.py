"""A launch bigger than one tick's batch is released batch after batch, without waiting for the interval."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from firmware_bundles import topics
from ota_server.config import Settings
from ota_server.errors import InvalidInput
from ota_server.mqtt.publisher import FakePublisher
from ota_server.rollout.fleet import Encoded
from ota_server.services import campaigns
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, vin


async def test_a_capped_tick_carries_on_at_once_until_every_car_is_notified(env: Env) -> None:
    env.runtime.coordinator._max_per_tick = 2  # the periodic tick is off in these tests (interval 0)
    vins = [vin(n) for n in range(1, 8)]
    await launched(env.client, vins)
    await env.runtime.coordinator.idle()
    nonces = await env.nonces()
    assert sorted(nonces) == sorted(vins)  # without carrying on: 2, and no periodic tick to release more


async def test_candidates_are_read_a_page_at_a_time(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from ota_server.rollout import notifying

    monkeypatch.setattr(notifying, "_CANDIDATE_PAGE", 1)
    env.runtime.coordinator._max_per_tick = 1  # pages of 2 cars, one released per tick
    vins = [vin(n) for n in range(1, 6)]
    await launched(env.client, vins)
    await env.runtime.coordinator.idle()
    assert sorted(await env.nonces()) == sorted(vins)


@pytest.mark.parametrize(("cap", "expected"), [(60, [60]), (25, [25, 25, 10])])
async def test_a_launch_within_the_cap_is_one_tick_and_a_larger_one_carries_on_in_batches_of_the_cap(
    env: Env, cap: int, expected: list[int]
) -> None:
    """Issue 19: batches that grew from a small first one (2, 8, 32, ...) signed each later batch while
    the cars notified first loaded the machine; one tick signs every chain before any car stirs."""
    coordinator = env.runtime.coordinator
    coordinator._max_per_tick = cap
    batches: list[int] = []
    dispatch = coordinator._dispatch

    def recorded(messages: Any) -> None:
        batches.append(len(messages))
        dispatch(messages)

    coordinator._dispatch = recorded
    vins = [vin(n) for n in range(1, 61)]
    await launched(env.client, vins)
    await coordinator.idle()
    assert batches == expected
    assert sorted(await env.nonces()) == sorted(vins)


def test_the_cap_is_a_setting_checked_at_start(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).scheduler_max_per_tick == 30_000
    assert Settings(data_dir=tmp_path, scheduler_max_per_tick=1).scheduler_max_per_tick == 1
    for wrong in (0, -5, 100_001):
        with pytest.raises(InvalidInput, match="SCHEDULER_MAX_PER_TICK must be 1 to 100000"):
            Settings(data_dir=tmp_path, scheduler_max_per_tick=wrong)


class HalfAcknowledged(FakePublisher):
    """A bulk publish whose session dropped: the broker acknowledged every other message only."""

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int, retain: bool, in_flight: int
    ) -> list[bool]:
        self.bulk_calls += 1
        for topic, payload in messages[::2]:
            await self.publish(topic, payload, qos=qos, retain=retain)
        return [index % 2 == 0 for index in range(len(messages))]


async def test_what_a_batch_left_unacknowledged_is_published_one_by_one_and_every_delivery_recorded(
    env: Env,
) -> None:
    publisher = HalfAcknowledged()
    env.runtime.dispatcher._publisher = publisher
    vins = [vin(n) for n in range(1, 8)]
    campaign = await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    assert publisher.bulk_calls == 1  # the launch's one tick: one batch
    assert sorted(m.topic for m in publisher.messages) == sorted(topics.campaign_topic(v) for v in vins)
    assert env.runtime.dispatcher.published == len(vins)
    with env.runtime.sessions() as session:
        assert campaigns.unpublished(session, "http://repo", env.clock()) == []  # each one recorded
    assert campaign["population"] == len(vins)


def test_the_notices_in_flight_are_a_setting_checked_at_start(tmp_path: Path) -> None:
    """0 left every launch's notices waiting forever; windows of more than 32,000 could pass MQTT's
    65,535 packet identifiers, and paho refuses a publish whose identifier is still in flight."""
    assert Settings(data_dir=tmp_path, notice_concurrency=32_000).notice_concurrency == 32_000
    for wrong in (0, -1, 32_001, 65_536):
        with pytest.raises(InvalidInput, match="NOTICE_CONCURRENCY must be 1 to 32000"):
            Settings(data_dir=tmp_path, notice_concurrency=wrong)


class Recording(FakePublisher):
    """Records each bulk publish (its first topic and size) in ``events`` as it starts."""

    def __init__(self, events: list[tuple[str, str, int]]) -> None:
        super().__init__()
        self.events = events

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int, retain: bool, in_flight: int
    ) -> list[bool]:
        self.events.append(("publish", messages[0][0], len(messages)))
        return await super().publish_many(messages, qos=qos, retain=retain, in_flight=in_flight)


def unencoded(env: Env) -> None:
    """The launch's notices handed to the dispatcher without their bytes, as a restart's unpublished ones
    are (:func:`ota_server.services.campaigns.unpublished`): the dispatcher encodes them."""
    coordinator = env.runtime.coordinator
    dispatch = coordinator._dispatch
    coordinator._dispatch = lambda messages: dispatch([m.message if isinstance(m, Encoded) else m for m in messages])


async def test_a_large_batch_to_encode_is_handed_over_a_slice_at_a_time_while_the_next_is_encoded(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: 30,000 notices were all encoded (~0.6 s) before the first was handed to the broker."""
    from ota_server.mqtt import notices

    unencoded(env)
    monkeypatch.setattr(notices, "LARGE_BATCH", 4)
    monkeypatch.setattr(notices, "SLICE", 3)
    events: list[tuple[str, str, int]] = []
    encode = notices._encoded

    def encoded(batch: Any) -> list[tuple[str, bytes]]:
        events.append(("encode", topics.campaign_topic(batch[0].vin), len(batch)))
        return encode(batch)

    monkeypatch.setattr(notices, "_encoded", encoded)
    publisher = Recording(events)
    env.runtime.dispatcher._publisher = publisher
    vins = [vin(n) for n in range(1, 9)]
    await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    sizes = [(kind, size) for kind, _, size in events]
    assert sorted(sizes) == sorted(
        [("encode", 3), ("encode", 3), ("encode", 2), ("publish", 3), ("publish", 3), ("publish", 2)]
    )
    # the first slice went to the broker before the last one was even started encoding
    assert events.index(("publish", events[0][1], 3)) < max(i for i, e in enumerate(events) if e[0] == "encode")
    # slices in order, each handed over as encoded
    firsts = [e[1] for e in events if e[0] == "encode"]
    assert [e[1] for e in events if e[0] == "publish"] == firsts
    assert [publisher.messages[k].topic for k in (0, 3, 6)] == firsts
    assert sorted(m.topic for m in publisher.messages) == sorted(topics.campaign_topic(v) for v in vins)
    assert env.runtime.dispatcher.published == len(vins)
    with env.runtime.sessions() as session:
        assert campaigns.unpublished(session, "http://repo", env.clock()) == []


async def test_after_a_slice_the_broker_did_not_take_the_rest_go_to_the_retries_without_a_wait_each(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that stops acknowledging costs the bulk path one wait (``connect_timeout_s``), not one
    per slice: the slices after it go straight to the one-by-one retries, as one whole batch did."""
    from ota_server.mqtt import notices

    unencoded(env)
    monkeypatch.setattr(notices, "LARGE_BATCH", 4)
    monkeypatch.setattr(notices, "SLICE", 3)
    publisher = HalfAcknowledged()
    env.runtime.dispatcher._publisher = publisher
    vins = [vin(n) for n in range(1, 9)]
    await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    assert publisher.bulk_calls == 1  # the first slice only
    assert sorted(m.topic for m in publisher.messages) == sorted(topics.campaign_topic(v) for v in vins)
    assert env.runtime.dispatcher.published == len(vins)
    with env.runtime.sessions() as session:
        assert campaigns.unpublished(session, "http://repo", env.clock()) == []


async def test_a_launchs_encoded_notices_go_through_one_window_not_a_slice_at_a_time(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: a launch's 30,000 notices, already encoded, went a slice of 2,000 at a time, each slice
    waiting for its last acknowledgement before the next left: the window emptied 15 times."""
    from ota_server.mqtt import notices

    monkeypatch.setattr(notices, "LARGE_BATCH", 4)
    monkeypatch.setattr(notices, "SLICE", 3)
    events: list[tuple[str, str, int]] = []
    publisher = Recording(events)
    env.runtime.dispatcher._publisher = publisher
    vins = [vin(n) for n in range(1, 9)]
    await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    assert [size for _, _, size in events] == [len(vins)]
    assert sorted(m.topic for m in publisher.messages) == sorted(topics.campaign_topic(v) for v in vins)
    with env.runtime.sessions() as session:
        assert campaigns.unpublished(session, "http://repo", env.clock()) == []


async def test_a_launchs_notices_are_published_as_the_tick_encoded_them(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: the tick measured each notice (encoding its chain), then the dispatcher encoded it again."""
    from firmware_bundles.messages import parse_notice
    from ota_server.mqtt import notices

    encoded_again: list[str] = []

    def counted(message: Any) -> bytes:
        encoded_again.append(message.vin)
        return b"{}"

    monkeypatch.setattr(notices, "encode", counted)
    vins = [vin(n) for n in range(1, 6)]
    await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    assert encoded_again == []  # none encoded a second time
    sent = [parse_notice(m.payload) for m in env.publisher.messages]  # the tick's bytes: whole notices
    assert sorted(n.vin for n in sent) == sorted(vins)
    assert all(m.topic == topics.campaign_topic(n.vin) for m, n in zip(env.publisher.messages, sent, strict=True))
    with env.runtime.sessions() as session:
        assert campaigns.unpublished(session, "http://repo", env.clock()) == []
