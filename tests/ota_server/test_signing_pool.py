"""The Director's signing processes (``OTA_DIRECTOR_SIGNING_PROCESSES``, issue 19).

What they sign is byte for byte what the server's own process signs; a process that lacks a key
the root trusts, or dies, costs time and never a chain (the server signs the slice itself); a
small plan never leaves the server; no process outlives a killed server; and a launch whose chains
were signed there gives the car a chain it verifies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Snapshot, Targets, Timestamp

from firmware_bundles import topics
from firmware_bundles.messages import parse_notice
from firmware_bundles.uptane import Expiry, RepoVersions, RoleSigners, image_target
from ota_server.config import Settings
from ota_server.errors import InvalidInput
from ota_server.signing import signing_pool
from ota_server.signing.chains import ChainOrder, sign_chain
from ota_server.signing.keys import director_signers
from ota_server.signing.signing_pool import SigningPool, keyids_of
from tests.ota_server.conftest import make_settings, running
from tests.ota_server.helpers import launched, vin
from tests.ota_server.test_director_reads import ReaderTransport, _car
from vehicle_agent.verifier import Verifier

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
IMAGE = image_target("bundles/ecu/1.1.0.otab", 4096, "ab" * 32, "ecu", "1.1.0", 3)


def _orders(count: int) -> list[ChainOrder]:
    return [
        ChainOrder(
            vin(n),
            {f"S-{n}": IMAGE, f"T-{n}": image_target(f"bundles/other/{n}.otab", 10, "cd" * 32, "other", "2.0", n)},
            RepoVersions(n % 3, n % 3, n % 3),
            {f"S-{n}": 3},
            "abort_all" if n % 2 else None,
            {"time_zone": "Europe/Berlin"} if n % 4 == 0 else None,
        )
        for n in range(1, count + 1)
    ]


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    director_signers(tmp_path)  # development keys: <tmp>/director/{root,online}.pem
    return tmp_path / "director"


@pytest.fixture
def signers(keys_dir: Path) -> RoleSigners:
    return director_signers(keys_dir.parent)


@pytest.mark.parametrize("max_slice", [1000, 2], ids=["one slice a process", "slices of two"])
def test_the_pool_signs_the_very_bytes_the_server_signs_and_they_verify(
    keys_dir: Path, signers: RoleSigners, max_slice: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing_pool, "MAX_SLICE", max_slice)
    orders = _orders(9)
    pool = SigningPool([keys_dir], 2, min_orders=1)
    try:
        pooled = pool.sign(signers, Expiry(), NOW, orders)
    finally:
        pool.close()
    assert pooled == [sign_chain(signers, Expiry(), NOW, order) for order in orders]
    online = signers.targets[0].public_key
    for order, chain in zip(orders, pooled, strict=True):
        targets = Metadata[Targets].from_bytes(chain["targets.json"][1])
        snapshot = Metadata[Snapshot].from_bytes(chain["snapshot.json"][1])
        timestamp = Metadata[Timestamp].from_bytes(chain["timestamp.json"][1])
        for md in (targets, snapshot, timestamp):
            online.verify_signature(md.signatures[online.keyid], md.signed_bytes)
        assert targets.signed.version == order.previous.targets + 1
        assert targets.signed.unrecognized_fields["vin"] == order.vin
        assert sorted(targets.signed.targets) == sorted(image.path for image in order.images.values())


def test_a_small_plan_is_signed_in_the_server_and_starts_no_process(keys_dir: Path, signers: RoleSigners) -> None:
    pool = SigningPool([keys_dir], 2, min_orders=10)
    assert pool.sign(signers, Expiry(), NOW, _orders(9)) is None
    assert pool._executor is None  # nothing started
    pool.close()


def test_a_process_without_the_roots_key_refuses_and_the_server_signs_instead(
    tmp_path: Path, signers: RoleSigners, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys found by the id the root trusts, never sent: a process holding other keys signs nothing."""
    director_signers(tmp_path / "other")  # another key pair: not the one the root trusts
    pool = SigningPool([tmp_path / "other" / "director"], 1, min_orders=1)
    with caplog.at_level(logging.WARNING, logger=signing_pool.__name__):
        try:
            assert pool.sign(signers, Expiry(), NOW, _orders(3)) is None
        finally:
            pool.close()
    online = keyids_of(signers)[0][0]
    assert f"the signing process holds no targets key {online}" in caplog.text
    assert "signing 3 chains in the server's process" in caplog.text


def test_a_dead_process_costs_time_never_a_chain(
    keys_dir: Path, signers: RoleSigners, caplog: pytest.LogCaptureFixture
) -> None:
    pool = SigningPool([keys_dir], 1, min_orders=1)
    try:
        assert pool.sign(signers, Expiry(), NOW, _orders(2)) is not None
        executor = pool._executor
        assert executor is not None
        for process in list(executor._processes.values()):
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
            process.join(10)
        with caplog.at_level(logging.WARNING, logger=signing_pool.__name__):
            assert pool.sign(signers, Expiry(), NOW, _orders(2)) is None  # the caller signs these itself
        assert "signing pool failed" in caplog.text
        again = pool.sign(signers, Expiry(), NOW, _orders(2))  # a new pool next time
        assert again == [sign_chain(signers, Expiry(), NOW, order) for order in _orders(2)]
    finally:
        pool.close()


_ORPHAN = """
import sys, time
from pathlib import Path
from ota_server.signing.signing_pool import SigningPool
pool = SigningPool([Path(sys.argv[1])], 2)
pool.start()
executor = pool._executor
while len(executor._processes) < 2:
    time.sleep(0.05)
print(*executor._processes, flush=True)
time.sleep(600)
"""


def test_no_signing_process_outlives_a_killed_server(keys_dir: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(keys_dir)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    assert server.stdout is not None
    children = [int(pid) for pid in server.stdout.readline().split()]
    assert len(children) == 2
    server.kill()
    server.wait(10)
    deadline = time.monotonic() + 30
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in children if _running(pid)]
    assert alive == [], "signing processes left behind by a killed server"


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def test_the_number_of_processes_is_checked_at_start(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, director_signing_processes=0).director_signing_processes == 0
    for wrong in (-1, 17):
        with pytest.raises(InvalidInput, match="DIRECTOR_SIGNING_PROCESSES must be 0 to 16"):
            Settings(data_dir=tmp_path, director_signing_processes=wrong)


async def test_a_launch_signed_in_the_pool_gives_the_car_a_chain_it_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing_pool, "MIN_ORDERS", 1)  # two cars' chains go to the pool too
    settings = make_settings(tmp_path / "server", notice_carries_metadata=True, director_signing_processes=1)
    async with running(settings) as env:
        env.clock.now = datetime.now(UTC)  # the agent checks expiry against the real time
        cars = [vin(1), vin(2)]
        await launched(env.client, cars)
        await env.runtime.dispatcher.idle()
        pool = env.runtime.director._pool
        assert pool is not None and pool._executor is not None  # the pool signed these chains
        for v in cars:
            (published,) = env.publisher.on(topics.campaign_topic(v))
            carried = parse_notice(published.payload).director_metadata
            assert carried is not None
            verified = Verifier(_car(env, v, tmp_path / v), ReaderTransport(env.runtime.repo_reader)).verify(carried)
            assert [a.ecu_serial for a in verified.assignments] == [f"S-{v[-6:]}"]
