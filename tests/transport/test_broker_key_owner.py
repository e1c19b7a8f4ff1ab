"""`ota broker config` run as root writes files the broker can read once it drops privileges (issue 15, item 5).

Mosquitto started as root becomes ``mosquitto`` (or ``user``) *before* it loads its TLS
key: a 0600 key owned by root stopped it with "Unable to load server key file ...
Permission denied".
"""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ota_server.infra.pki import CertificateAuthority
from ota_server.mqtt.mosquitto_config import Ownership, write_broker_config
from simulator.server_process import terminate
from tests import services
from tests.transport.conftest import HOST, START_DEADLINE_S, free_port, mosquitto_binary
from tests.transport.test_mosquitto_lockdown import CONNACK_OK, raw_connect

MOSQUITTO = pwd.struct_passwd(("mosquitto", "x", 105, 108, "", "/var/lib/mosquitto", "/usr/sbin/nologin"))


class FakeSystem:
    def __init__(self, euid: int, users: dict[str, pwd.struct_passwd]) -> None:
        self.euid, self.users = euid, users
        self.chowned: list[tuple[Path, int, int]] = []

    def lookup(self, name: str) -> pwd.struct_passwd:
        return self.users[name]  # KeyError, like pwd.getpwnam

    def chown(self, path: Path, uid: int, gid: int) -> None:
        self.chowned.append((path, uid, gid))

    def ownership(self) -> Ownership:
        return Ownership(euid=lambda: self.euid, lookup=self.lookup, chown=self.chown)


def _write(out: Path, system: FakeSystem, run_as: str | None = None) -> tuple[Path, Path, list[str]]:
    now = datetime.now(UTC)
    files = write_broker_config(
        out, CertificateAuthority.create(now), now, hostnames=[HOST], run_as=run_as, owner=system.ownership()
    )
    return files.broker_key, out.resolve() / "data", files.to_run


def test_as_root_the_key_and_data_go_to_the_mosquitto_user(tmp_path: Path) -> None:
    system = FakeSystem(0, {"mosquitto": MOSQUITTO})
    key, data, to_run = _write(tmp_path / "broker", system)
    assert system.chowned == [(key, 105, 108), (data, 105, 108)]
    assert to_run == []
    assert key.stat().st_mode & 0o777 == 0o600


def test_as_root_without_that_user_the_exact_commands_are_given(tmp_path: Path) -> None:
    system = FakeSystem(0, {})
    key, data, to_run = _write(tmp_path / "broker", system, run_as="mqtt")
    assert system.chowned == []
    assert f"chown mqtt: {key} {data}" in to_run


def test_as_another_user_the_commands_are_given_when_mosquitto_runs_as_someone_else(tmp_path: Path) -> None:
    system = FakeSystem(1000, {"mosquitto": MOSQUITTO})
    key, data, to_run = _write(tmp_path / "broker", system, run_as="mosquitto")
    assert system.chowned == []
    assert to_run == [f"sudo chown mosquitto: {key} {data}", f"sudo chmod 0600 {key}"]
    # started by this same user, mosquitto reads what this user wrote: nothing to do
    assert _write(tmp_path / "mine", system)[2] == []


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory the ``mosquitto`` user can enter (pytest's tmp_path is root's own, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ota-broker-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to let mosquitto drop to its own user")
def test_mosquitto_started_as_root_drops_to_its_user_and_serves(world_readable_dir: Path) -> None:
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user on this machine")
    binary = mosquitto_binary()
    now = datetime.now(UTC)
    ca = CertificateAuthority.create(now)
    files = write_broker_config(world_readable_dir / "broker", ca, now, port=free_port(), bind=HOST, hostnames=[HOST])
    log = world_readable_dir / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(files.conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not services.reachable(HOST, files.port):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        issued = ca.issue_client("car", now)
        (world_readable_dir / "car.crt").write_bytes(issued.cert_pem)
        (world_readable_dir / "car.key").write_bytes(issued.key_pem)
        context = ssl.create_default_context(cafile=files.ca)
        context.load_cert_chain(world_readable_dir / "car.crt", world_readable_dir / "car.key")
        assert raw_connect(files.port, context) == CONNACK_OK, log.read_text()
    finally:
        terminate(process)
