"""ota-bench's notice observer: Mosquitto's C client stamps each car's first notice as it arrives."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bench.notice_observer import (
    MosquittoObserver,
    PahoObserver,
    first_arrivals,
    first_messages,
    mean_notice_bytes,
    observer,
)
from firmware_bundles import topics
from simulator.brokers import Listener, mosquitto_tool
from simulator.errors import SimulatorError
from tests import services


def test_each_cars_first_non_empty_message_is_its_notice_in_monotonic_time() -> None:
    lines = [
        f"100.5 3000 {topics.campaign_topic('VIN1')}",
        f"100.25 3100 {topics.campaign_topic('VIN2')}",
        f"101.0 3000 {topics.campaign_topic('VIN1')}",  # a retry: not the first notice
        f"99.0 0 {topics.campaign_topic('VIN3')}",  # an empty (cleared) retained message
        f"102.0 3000 {topics.campaign_topic('VIN3')}",
        f"98.0 14 {topics.campaign_topic('PROBE-leaf-1-abc')}",  # a bridge probe, not a car
        f"97.0 14 {topics.status_topic('VIN4')}",  # not a campaign topic
        "not a line",
        f"x 10 {topics.campaign_topic('VIN5')}",
        "",
    ]
    assert first_arrivals(lines, wall_to_monotonic=-100.0) == {"VIN1": 0.5, "VIN2": 0.25, "VIN3": 2.0}
    # and each first notice's length: the notice floor sends as many notices of their mean length
    assert first_messages(lines) == {"VIN1": (100.5, 3000), "VIN2": (100.25, 3100), "VIN3": (102.0, 3000)}
    assert mean_notice_bytes(lines) == 3033  # (3000 + 3100 + 3000) / 3, the retry and the rest not counted
    assert mean_notice_bytes(["not a line"]) is None


def test_without_mosquitto_brokers_the_observer_is_pahos(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made: list[tuple[str, int]] = []
    monkeypatch.setattr(PahoObserver, "__init__", lambda self, host, port: made.append((host, port)))
    assert isinstance(observer("127.0.0.1", 1, tmp_path, mosquitto=False), PahoObserver)
    assert made == [("127.0.0.1", 1)]


def test_mosquitto_sub_stamps_each_cars_first_notice_when_it_arrives(tmp_path: Path) -> None:
    services.mosquitto_url()
    binary = mosquitto_tool("mosquitto_sub")
    if binary is None:
        if services.required():
            pytest.fail("mosquitto_sub is missing and OTA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("mosquitto_sub is not installed")
    host, port = services.MOSQUITTO_HOST, services.MOSQUITTO_PORT
    watching = MosquittoObserver(binary, host, port, tmp_path / "seen.txt")
    assert os.getsid(watching.pid) == watching.pid != os.getsid(0)  # its own CPU share (simulator.cpu_share)
    vins = [f"OBS{secrets.token_hex(6).upper()}{n}" for n in range(3)]
    publisher = Listener(host, port, f"obs-none-{secrets.token_hex(4)}/#")
    try:
        sent_from = time.monotonic()
        for vin in vins:
            publisher.publish(topics.campaign_topic(vin), b'{"kind":"campaign"}')
        publisher.publish(topics.campaign_topic(vins[0]), b'{"kind":"campaign","retry":1}')
        sent_by = time.monotonic()
        deadline = time.monotonic() + 10
        while set(vins) - set(watching.arrivals()) and time.monotonic() < deadline:
            time.sleep(0.05)
        read_at = time.monotonic()
        mine = {vin: at for vin, at in watching.arrivals().items() if vin in vins}
    finally:
        publisher.close()
        watching.close()
    assert sorted(mine) == sorted(vins)  # each car once, the retry not counted again
    # stamped by mosquitto_sub when each arrived: after it was sent, before it was read here
    assert all(sent_from <= at <= read_at for at in mine.values()), (sent_from, sent_by, mine, read_at)
    assert watching.notices(0) == sorted(watching.arrivals().values())


def test_an_observer_that_never_sees_its_probe_is_stopped_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.mosquitto_url()
    binary = mosquitto_tool("mosquitto_sub")
    if binary is None:
        pytest.skip("mosquitto_sub is not installed")
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def recorded(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", recorded)
    # the probe goes where the observer does not listen (as if its subscription never took)
    monkeypatch.setattr(topics, "campaign_topic", lambda vin: f"obs-elsewhere/{vin}")
    host, port = services.MOSQUITTO_HOST, services.MOSQUITTO_PORT
    with pytest.raises(SimulatorError, match=f"{host}:{port} saw nothing"):
        MosquittoObserver(binary, host, port, tmp_path / "seen.txt", ready_timeout_s=1)
    assert len(started) == 1 and started[0].poll() is not None  # not left running
