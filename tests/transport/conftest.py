"""A real Mosquitto started with the project's generated configuration, on a free port, in tmp_path."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from ota_server.infra.pki import SERVER_CLIENT_CN, CertificateAuthority
from ota_server.mqtt.mosquitto_config import BrokerFiles, write_broker_config
from simulator.server_process import terminate
from tests import services

HOST = "127.0.0.1"
START_DEADLINE_S = 15.0


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if services.required():
            pytest.fail("the mosquitto binary is missing and OTA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("the mosquitto binary is not installed")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Broker:
    files: BrokerFiles
    ca: CertificateAuthority
    certs: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        return self.files.port

    def context(self, common_name: str | None, *, ca: CertificateAuthority | None = None) -> ssl.SSLContext:
        """Trust the broker's CA; present a certificate for ``common_name`` issued by ``ca`` (ours by default)."""
        context = ssl.create_default_context(cafile=self.files.ca)
        if common_name is not None:
            issued = (ca or self.ca).issue_client(common_name, datetime.now(UTC))
            cert, key = self.certs / f"{common_name}-{id(issued)}.crt", self.certs / f"{common_name}-{id(issued)}.key"
            cert.write_bytes(issued.cert_pem)
            key.write_bytes(issued.key_pem)
            context.load_cert_chain(cert, key)
        return context

    def client(self, common_name: str, *, identifier: str | None = None) -> aiomqtt.Client:
        return aiomqtt.Client(
            HOST,
            self.port,
            identifier=identifier or common_name,
            clean_session=True,
            tls_context=self.context(common_name),
            timeout=10,
        )

    def server_client(self) -> aiomqtt.Client:
        return self.client(SERVER_CLIENT_CN)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    binary = mosquitto_binary()
    now = datetime.now(UTC)
    ca = CertificateAuthority.create(now)
    run_as = getpass.getuser() if os.geteuid() == 0 else None  # keep root's access to the 0600 keys
    files = write_broker_config(
        tmp_path / "broker", ca, now, port=free_port(), bind=HOST, hostnames=[HOST], persistence=False, run_as=run_as
    )
    certs = tmp_path / "clients"
    certs.mkdir()
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-c", str(files.conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not services.reachable(HOST, files.port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield Broker(files, ca, certs, log, process)
    finally:
        terminate(process)
