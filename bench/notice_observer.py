"""When did each car's notice leave the hub? An independent subscriber on the campaign topics.

``ota-bench`` times launch to last notice with it. Two observers, the same question:

* :class:`MosquittoObserver`, when ``mosquitto_sub`` is installed (Mosquitto brokers): Mosquitto's
  own C client in a process of its own stamps each message as it arrives (``%U``, the wall clock)
  and prints one short line (time, payload length, topic), never the payload.
* :class:`PahoObserver` otherwise (the embedded broker): a paho client in a thread of the
  benchmark's process, which reads each payload and keeps the campaign's notices only.

Why not paho always: in a 30,000-car run the benchmark's process shares the machine's two cores
with the server, the brokers and four worker processes. A Python thread stamps a message when
it gets the GIL and a CPU, not when the message arrived: with the server and the brokers ahead of
the cars, the hub had sent every notice ~7 s after the approval while the paho observer's last
stamp read 18.9 s (issue 19, history.md). The C client's stamp is the arrival.

:class:`MosquittoObserver` keeps the first non-empty message per topic: a run launches one
campaign on a fresh database and fresh brokers, so the first message on a car's campaign topic
is that campaign's notice (a retry comes later; a cleared retained notice is empty). The bridge
probes' topics (``PROBE_PREFIX``) are not cars.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from firmware_bundles import topics
from firmware_bundles.errors import MalformedMessage
from simulator.brokers import CAMPAIGNS, PROBE_PREFIX, Listener, mosquitto_tool
from simulator.errors import SimulatorError


class NoticeObserver(Protocol):
    def notices(self, campaign_id: int) -> list[float]:
        """Monotonic arrival time of each car's first notice of ``campaign_id``, sorted."""

    def notice_bytes(self) -> int | None:
        """The mean length of the notices seen (each car's first), None before any."""

    def close(self) -> None: ...


class PahoObserver:
    """A paho client on the hub, in a thread of this process (see the module docstring)."""

    def __init__(self, host: str, port: int) -> None:
        self.listener = Listener(host, port, CAMPAIGNS, client_id=f"bench-observer-{os.getpid()}")
        self._sizes: dict[str, int] = {}  # each car's first notice's length, by VIN (once notices() read them)

    def notices(self, campaign_id: int) -> list[float]:
        first: dict[str, float] = {}
        for at, _topic, payload, _retained in self.listener.received():
            try:
                message = json.loads(payload)
            except ValueError:
                continue
            if message.get("kind") != "campaign" or message.get("campaign_id") != campaign_id:
                continue
            vin = str(message.get("vin"))
            if vin not in first:
                first[vin] = at
                self._sizes[vin] = len(payload)
        return sorted(first.values())

    def notice_bytes(self) -> int | None:
        return _mean(self._sizes.values())

    def close(self) -> None:
        self.listener.close()


def _mean(sizes: Collection[int]) -> int | None:
    return round(sum(sizes) / len(sizes)) if sizes else None


def first_arrivals(lines: list[str], wall_to_monotonic: float) -> dict[str, float]:
    """From ``mosquitto_sub -F '%U %l %t'`` lines: each car's first non-empty message, by VIN, as
    monotonic seconds (wall clock + ``wall_to_monotonic``). Probes and unreadable lines are skipped."""
    return {vin: at + wall_to_monotonic for vin, (at, _) in first_messages(lines).items()}


def mean_notice_bytes(lines: list[str]) -> int | None:
    """The mean length of each car's first notice in ``mosquitto_sub`` lines (None: no notice)."""
    return _mean([size for _, size in first_messages(lines).values()])


def first_messages(lines: list[str]) -> dict[str, tuple[float, int]]:
    """Each car's first non-empty message in ``mosquitto_sub -F '%U %l %t'`` lines, by VIN: its wall-clock
    stamp and its length in bytes."""
    first: dict[str, tuple[float, int]] = {}
    for line in lines:
        parts = line.strip().split(" ", 2)
        if len(parts) != 3:
            continue
        stamp, length, topic = parts
        try:
            at, size = float(stamp), int(length)
        except ValueError:
            continue
        if size <= 0:
            continue
        try:
            vin = topics.vin_from_topic(topic)
        except MalformedMessage:
            continue
        if topic != topics.campaign_topic(vin) or vin.startswith(PROBE_PREFIX) or vin in first:
            continue
        first[vin] = (at, size)
    return first


# The observer's subscription: QoS 0. Its stamp is when a notice arrives, the same at either QoS; at
# QoS 1 the hub also kept an in-flight window for the observer and read an acknowledgement for each of
# 30,000 notices, and the observer sent them: the instrument's own work, on the two cores the launch
# shares (issue 19). Nothing is dropped for a connected subscriber (the brokers queue without limit).
OBSERVER_QOS = 0


class MosquittoObserver:
    """``mosquitto_sub`` on the hub in its own process, stamping each arrival (see the module docstring)."""

    def __init__(self, binary: str, host: str, port: int, out: Path, *, ready_timeout_s: float = 10.0) -> None:
        self._out = out
        # one offset for the run: the wall clock is read by mosquitto_sub, the benchmark times by monotonic
        self._wall_to_monotonic = time.monotonic() - time.time()
        command = [binary, "-h", host, "-p", str(port), "-q", str(OBSERVER_QOS), "-t", CAMPAIGNS]
        command += ["-i", f"bench-observer-{os.getpid()}", "-F", "%U %l %t"]
        with out.open("wb") as sink:
            self._process = subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.PIPE,
                start_new_session=True,  # simulator.cpu_share
            )
        try:
            self._wait_subscribed(host, port, ready_timeout_s)
        except BaseException:
            self.close()  # never left running behind a run that did not start
            raise

    def _wait_subscribed(self, host: str, port: int, timeout_s: float) -> None:
        """Publish a probe until mosquitto_sub has printed it: subscribed before any notice can go out."""
        probe = topics.campaign_topic(f"{PROBE_PREFIX}observer-{os.getpid()}")
        try:
            listener = Listener(host, port, f"{PROBE_PREFIX}unused/#")  # only to publish the probe
        except OSError as exc:
            raise SimulatorError(f"the notice observer cannot reach the hub {host}:{port}: {exc}") from exc
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise SimulatorError(f"mosquitto_sub exited: {self._stderr()}")
                listener.publish(probe, b"observer ready")
                time.sleep(0.2)
                if probe in self._out.read_text(errors="replace"):
                    return
            raise SimulatorError(f"mosquitto_sub on {host}:{port} saw nothing in {timeout_s:.0f} s")
        finally:
            listener.close()

    def _stderr(self) -> str:
        if self._process.stderr is None:
            return ""
        return self._process.stderr.read().decode(errors="replace").strip()

    def arrivals(self) -> dict[str, float]:
        """Each car's first message so far, by VIN (monotonic seconds)."""
        return first_arrivals(self._out.read_text(errors="replace").splitlines(), self._wall_to_monotonic)

    def notices(self, campaign_id: int) -> list[float]:
        """Every car's first notice (one campaign per run: ``campaign_id`` is not in the lines)."""
        self.close()
        return sorted(self.arrivals().values())

    def notice_bytes(self) -> int | None:
        return mean_notice_bytes(self._out.read_text(errors="replace").splitlines())

    @property
    def pid(self) -> int:
        """``mosquitto_sub``'s process id (in a session of its own: simulator.cpu_share)."""
        return self._process.pid

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # mosquitto_sub disconnects and exits
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr is not None:
            self._process.stderr.close()


def observer(host: str, port: int, workdir: Path, *, mosquitto: bool) -> NoticeObserver:
    """The C observer on Mosquitto brokers when ``mosquitto_sub`` is installed, else paho's."""
    binary = mosquitto_tool("mosquitto_sub") if mosquitto else None
    if binary is None:
        return PahoObserver(host, port)
    return MosquittoObserver(binary, host, port, workdir / "notices-observed.txt")
