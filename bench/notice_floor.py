"""The brokers' floor for a launch's notices: the server's own publishing code and the brokers, nothing else.

After the fleet run (its cars gone), ``ota-bench`` publishes as many notices as the launch did,
each as long as the launch's were on average, through the server's MQTT link
(:meth:`ota_server.mqtt.link.ServerMqttLink.publish_many`, MQTT v5 as the server runs it, the
dispatcher's window) into the hub: retained, QoS 1, one car campaign topic each (made-up VINs,
``FLOOR-...``), so every bridged leaf stores and takes each one as during the launch. A
``mosquitto_sub`` on the hub with the observer's subscription (``-R``: the run's own retained
notices are not counted) exits at the last one. Seconds from the first publish to its exit, and
the CPU each broker, the subscriber and this process spent meanwhile.

That is the part of "launch to last notice" no change to the server's launch can remove on this
machine with this topology: the server's path to its first notice comes before it, and the cars,
which load the machine during a launch, are absent here (issue 19).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from firmware_bundles import topics
from ota_server.mqtt.link import MQTT_V5, ServerMqttLink
from simulator.brokers import CAMPAIGNS, Broker, mosquitto_tool
from simulator.procstat import cpu_seconds

VIN_PREFIX = "FLOOR-"
IN_FLIGHT = 1000  # the notice dispatcher's default window (OTA_NOTICE_CONCURRENCY)
CONNECT_TIMEOUT_S = 10.0
SUBSCRIBE_SETTLE_S = 1.0


@dataclass(frozen=True)
class FloorResult:
    notices: int
    payload_bytes: int
    seconds: float | None  # first publish -> the subscriber on the hub has them all
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per broker, "subscriber", "publisher"
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "notices": self.notices,
            "payload_bytes": self.payload_bytes,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "note": self.note,
        }


def floor_topics(count: int) -> list[str]:
    """``count`` car campaign topics, none of them a car's."""
    return [topics.campaign_topic(f"{VIN_PREFIX}{index:011d}") for index in range(count)]


async def _publish(url: str, messages: list[tuple[str, bytes]], timeout_s: float) -> list[bool]:
    link = ServerMqttLink(
        url,
        lambda _topic, _payload, _ack: None,
        client_id=f"ota-bench-floor-{os.getpid()}",
        username="",
        clean_session=True,
        connect_timeout_s=timeout_s,
        version=MQTT_V5,
    )
    await link.start(wait_s=timeout_s)
    try:
        if not link.connected:
            return [False] * len(messages)
        return await link.publish_many(messages, qos=topics.QOS, retain=True, in_flight=IN_FLIGHT)
    finally:
        await link.stop()


def notice_floor(
    hub: Broker, leaves: list[Broker], notices: int, payload_bytes: int, *, timeout_s: float = 300.0
) -> FloorResult:
    """Publish ``notices`` retained notices of ``payload_bytes`` into ``hub`` (bridged to ``leaves``) as the
    server does, and time them until a subscriber on the hub has every one."""
    sub = mosquitto_tool("mosquitto_sub")
    if sub is None:
        return FloorResult(notices, payload_bytes, None, note="mosquitto_sub not installed")
    if notices < 1 or payload_bytes < 1:
        return FloorResult(notices, payload_bytes, None, note="nothing to send")
    payload = b"x" * payload_bytes
    messages = [(topic, payload) for topic in floor_topics(notices)]
    reaped = _reaped_children_cpu()  # the subscriber's CPU is read once it is reaped
    command = [sub, "-h", hub.host, "-p", str(hub.port), "-q", str(topics.QOS), "-t", CAMPAIGNS, "-R"]
    subscriber = subprocess.Popen(
        [*command, "-C", str(notices)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    brokers = {broker.name: broker.pid for broker in [hub, *leaves] if broker.pid is not None}
    try:
        time.sleep(SUBSCRIBE_SETTLE_S)
        if subscriber.poll() is not None:
            return FloorResult(notices, payload_bytes, None, note=f"mosquitto_sub failed: {_error(subscriber)}")
        before = {name: cpu_seconds(pid) for name, pid in brokers.items()}
        own = time.process_time()
        started = time.monotonic()
        acked = asyncio.run(_publish(hub.url, messages, CONNECT_TIMEOUT_S))
        if not all(acked):
            return FloorResult(notices, payload_bytes, None, note=f"the hub took {sum(acked)} of {notices}")
        try:
            subscriber.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return FloorResult(notices, payload_bytes, None, note=f"not all arrived in {timeout_s:.0f} s")
        seconds = time.monotonic() - started
        if subscriber.returncode != 0:
            return FloorResult(notices, payload_bytes, None, note=f"mosquitto_sub failed: {_error(subscriber)}")
        cpu = {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in brokers.items()}
        cpu["subscriber"] = round(_reaped_children_cpu() - reaped, 2)
        cpu["publisher"] = round(time.process_time() - own, 2)
        return FloorResult(notices, payload_bytes, round(seconds, 3), cpu)
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            subscriber.wait(timeout=10)
        if subscriber.stderr is not None:
            subscriber.stderr.close()


def _error(process: subprocess.Popen[bytes]) -> str:
    text = (process.stderr.read() if process.stderr else b"").decode(errors="replace").strip()
    return text or f"exit status {process.returncode}"


def _reaped_children_cpu() -> float:
    """The CPU of this process's children reaped so far (a reaped child is gone from /proc)."""
    times = os.times()
    return times.children_user + times.children_system
