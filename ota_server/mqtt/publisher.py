"""The one thing the server needs from MQTT to talk to cars: publish a message.

Services and the notice dispatcher depend on this Protocol, so tests use
:class:`FakePublisher` and never need a broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        """Return once the broker has the message (PUBACK for QoS 1); raise on failure."""

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int, retain: bool, in_flight: int
    ) -> list[bool]:
        """Publish each ``(topic, payload)``, at most ``in_flight`` unacknowledged at once; per message,
        whether the broker has it. Never raises: what failed is the caller's to retry."""


@dataclass(frozen=True)
class Published:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class FakePublisher:
    """Records every message; ``fail_topics`` makes chosen publishes raise, to test retries."""

    def __init__(self, fail_topics: set[str] | None = None) -> None:
        self.messages: list[Published] = []
        self.fail_topics = fail_topics or set()
        self.connected = True  # what /readyz reads; tests set False to play a lost broker link
        self.bulk_calls = 0  # publish_many calls (a batch of notices each)

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        if topic in self.fail_topics:
            raise ConnectionError(f"fake publish failure on {topic}")
        self.messages.append(Published(topic, payload, qos, retain))

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int, retain: bool, in_flight: int
    ) -> list[bool]:
        self.bulk_calls += 1
        done = []
        for topic, payload in messages:
            try:
                await self.publish(topic, payload, qos=qos, retain=retain)
            except ConnectionError:
                done.append(False)
            else:
                done.append(True)
        return done

    def on(self, topic: str) -> list[Published]:
        return [m for m in self.messages if m.topic == topic]
