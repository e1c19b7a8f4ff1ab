"""The brokers' floor for a launch's notices: the server's own publishing code and the brokers, nothing else.

After the fleet run (its cars gone), ``ota-bench`` publishes as many notices as the launch did,
each as long as the launch's were on average, through the server's MQTT link
(:meth:`ota_server.mqtt.link.ServerMqttLink.publish_many`, MQTT v5 as the server runs it, the
dispatcher's window) into the hub: retained, QoS 1, one car campaign topic each (made-up VINs,
``FLOOR-...``), so every bridged leaf stores and takes each one as during the launch. A
``mosquitto_sub`` on the hub with the observer's subscription (``-R``: the run's own retained
notices are not counted) exits at the last one. Seconds from the first publish to its exit, and
the CPU each broker, the subscriber and the publisher spent meanwhile.

The publisher is a process of its own (``python -m bench.notice_floor URL COUNT BYTES``), in a
session of its own (simulator.cpu_share), connected before the clock starts: in the bench's own
process, whose heap holds the whole fleet's set-up, the garbage collector tripled its CPU.

That is the part of "launch to last notice" no change to the server's launch can remove on this
machine with this topology: the server's path to its first notice comes before it, and the cars,
which load the machine during a launch, are absent here (issue 19).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import aiomqtt

from bench.notice_observer import OBSERVER_QOS
from firmware_bundles import topics
from ota_server.mqtt.link import MQTT_V5, ServerMqttLink
from simulator.brokers import CAMPAIGNS, Broker, mosquitto_tool
from simulator.procstat import cpu_seconds

VIN_PREFIX = "FLOOR-"
IN_FLIGHT = 1000  # the notice dispatcher's default window (OTA_NOTICE_CONCURRENCY)
CONNECT_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 60.0  # the publisher started and connected
SUBSCRIBE_SETTLE_S = 1.0
READY, GO = "ready", "go"


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
    return [topics.campaign_topic(vin) for vin in floor_vins(count)]


def floor_vins(count: int) -> list[str]:
    """The made-up VINs of ``count`` floor notices (a routed cluster routes each to one leaf, as a car's)."""
    return [f"{VIN_PREFIX}{index:011d}" for index in range(count)]


# -- the publisher (its own process) -------------------------------------------------------------


class _PublishOnly(ServerMqttLink):
    """The server's link, its subscriptions left out: the run's cars' retained presence (one per car)
    would pour in while it publishes, which the server's link takes at its start, not at a launch."""

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        return None


async def _publish(url: str, count: int, payload_bytes: int, lines: IO[str], out: IO[str]) -> None:
    """Connect, say ``ready``, wait for ``go``, publish, then say how many the hub took and the CPU spent."""
    messages = [(topic, b"x" * payload_bytes) for topic in floor_topics(count)]
    link = _PublishOnly(
        url,
        lambda _topic, _payload, _ack: None,
        client_id=f"ota-bench-floor-{os.getpid()}",
        username="",
        clean_session=True,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        version=MQTT_V5,
    )
    await link.start(wait_s=CONNECT_TIMEOUT_S)
    try:
        print(READY if link.connected else "not connected", file=out, flush=True)
        if not link.connected or (await asyncio.to_thread(lines.readline)).strip() != GO:
            return
        cpu = time.process_time()
        acked = await link.publish_many(messages, qos=topics.QOS, retain=True, in_flight=IN_FLIGHT)
        report = {"acked": sum(acked), "cpu_seconds": round(time.process_time() - cpu, 2)}
        print(json.dumps(report), file=out, flush=True)
    finally:
        await link.stop()


def main(argv: list[str] | None = None) -> None:
    url, count, payload_bytes = (argv if argv is not None else sys.argv[1:])[:3]
    asyncio.run(_publish(url, int(count), int(payload_bytes), sys.stdin, sys.stdout))


# -- the measurement -----------------------------------------------------------------------------


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
    reaped = _reaped_children_cpu()  # the subscriber's CPU is read once it is reaped
    command = [sub, "-h", hub.host, "-p", str(hub.port), "-q", str(OBSERVER_QOS), "-t", CAMPAIGNS, "-R"]
    subscriber = subprocess.Popen(
        [*command, "-C", str(notices)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    publisher = subprocess.Popen(
        [sys.executable, "-m", "bench.notice_floor", hub.url, str(notices), str(payload_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    brokers = {broker.name: broker.pid for broker in [hub, *leaves] if broker.pid is not None}
    try:
        time.sleep(SUBSCRIBE_SETTLE_S)
        if subscriber.poll() is not None:
            return FloorResult(notices, payload_bytes, None, note=f"mosquitto_sub failed: {_error(subscriber)}")
        said = _line(publisher, READY_TIMEOUT_S)
        if said != READY:
            return FloorResult(notices, payload_bytes, None, note=f"the publisher said {said!r}: {_error(publisher)}")
        before = {name: cpu_seconds(pid) for name, pid in brokers.items()}
        started = time.monotonic()
        assert publisher.stdin is not None
        publisher.stdin.write(GO + "\n")
        publisher.stdin.flush()
        said = _line(publisher, timeout_s)
        try:
            report = json.loads(said)
        except ValueError:
            return FloorResult(notices, payload_bytes, None, note=f"the publisher said {said!r}: {_error(publisher)}")
        if report["acked"] != notices:
            return FloorResult(notices, payload_bytes, None, note=f"the hub took {report['acked']} of {notices}")
        try:
            subscriber.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return FloorResult(notices, payload_bytes, None, note=f"not all arrived in {timeout_s:.0f} s")
        seconds = time.monotonic() - started
        if subscriber.returncode != 0:
            return FloorResult(notices, payload_bytes, None, note=f"mosquitto_sub failed: {_error(subscriber)}")
        cpu = {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in brokers.items()}
        cpu["subscriber"] = round(_reaped_children_cpu() - reaped, 2)
        cpu["publisher"] = float(report["cpu_seconds"])
        return FloorResult(notices, payload_bytes, round(seconds, 3), cpu)
    finally:
        for process in (publisher, subscriber):
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def _line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The next line ``process`` prints (empty if it exits or says nothing for ``timeout_s``)."""
    stdout = process.stdout
    assert stdout is not None
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return found[0].strip() if found else ""


def _error(process: subprocess.Popen[Any]) -> str:
    if process.poll() is None:
        return "still running"
    stderr = process.stderr.read() if process.stderr else ""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return text.strip().splitlines()[-1] if text.strip() else f"exit status {process.returncode}"


def _reaped_children_cpu() -> float:
    """The CPU of this process's children reaped so far (a reaped child is gone from /proc)."""
    times = os.times()
    return times.children_user + times.children_system


if __name__ == "__main__":
    main()
