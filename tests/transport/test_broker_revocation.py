"""A revoked car certificate is refused by the broker (issue 15, item 2).

Before: no CRL at all, so the certificate of a re-provisioned car kept connecting,
reading its retained notice and taking over the real car's client id. The generated
configuration names a ``crlfile``; the server rewrites it on every revocation and
Mosquitto re-reads it on SIGHUP.
"""

from __future__ import annotations

import signal
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from ota_server.cli.main import app
from ota_server.infra.pki import Issued
from ota_server.infra.pki import write_file as write_pem
from tests.transport.conftest import HOST, Broker
from tests.transport.test_mosquitto_lockdown import CONNACK_OK, A, raw_connect

DEADLINE_S = 10.0


def _context(broker: Broker, issued: Issued, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=broker.files.ca)
    cert, key = broker.certs / f"{name}.crt", broker.certs / f"{name}.key"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    context.load_cert_chain(cert, key)
    return context


def _refused_within(broker: Broker, context: ssl.SSLContext) -> bool:
    """Whether the broker starts refusing ``context`` before the deadline (it reloads asynchronously)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if raw_connect(broker.port, context) != CONNACK_OK:
            return True
        time.sleep(0.1)
    return False


def test_the_server_is_told_where_the_broker_reads_its_crl(broker: Broker) -> None:
    assert f"crlfile {broker.files.crl}" in broker.files.conf.read_text()
    assert broker.files.server_env(HOST)["OTA_MQTT_CRL_FILE"] == str(broker.files.crl)


def test_a_revoked_certificate_is_refused_after_sighup(broker: Broker) -> None:
    now = datetime.now(UTC)
    stolen = broker.ca.issue_client(A, now)  # the bundle provisioned first (then stolen)
    current = broker.ca.issue_client(A, now)  # the car's bundle after provisioning again
    old, new = _context(broker, stolen, "stolen"), _context(broker, current, "current")
    assert raw_connect(broker.port, old) == CONNACK_OK

    write_pem(broker.files.crl, broker.ca.crl([(stolen.serial, now)], now), 0o644)
    broker.process.send_signal(signal.SIGHUP)

    assert _refused_within(broker, old), broker.log.read_text()
    assert raw_connect(broker.port, new) == CONNACK_OK  # the real car is welcome


def test_ota_broker_config_tells_the_server_where_the_crl_and_the_share_group_are(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    args = ["broker", "config", "--out", str(out), "--data-dir", str(tmp_path / "var"), "--host", HOST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"export OTA_MQTT_CRL_FILE={out.resolve() / 'certs' / 'crl.pem'}" in result.output
    assert f"export OTA_MQTT_SHARE_GROUP={(out / 'share_group').read_text()}" in result.output
    assert "kill -HUP" in result.output
