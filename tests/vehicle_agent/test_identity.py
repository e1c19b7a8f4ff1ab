"""The car's identity: every report signed with its key; the provisioned bundle loads; TLS from config."""

from __future__ import annotations

import ssl
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from firmware_bundles.provisioning import write_bundle
from firmware_bundles.report_signing import generate_report_key, private_key_pem, verify_report
from ota_server.infra.pki import CertificateAuthority
from vehicle_agent.agent import Agent
from vehicle_agent.config import load_config, write_config
from vehicle_agent.errors import ConfigError
from vehicle_agent.link import FakeLink, tls_context

from .conftest import Car
from .fakes import SERIAL, VIN, FakeServer

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _identity(server: FakeServer, *, certificate: bool, mqtt_url: str = "mqtt://broker.test:1883") -> dict[str, Any]:
    key = generate_report_key()
    identity: dict[str, Any] = {
        "vin": VIN,
        "keyid": key.public_key.keyid,
        "report_private_key": private_key_pem(key).decode(),
        "agent_config": {**server.agent_config_doc(), "mqtt_url": mqtt_url},
    }
    if certificate:
        ca = CertificateAuthority.create(NOW)
        issued = ca.issue_client(VIN, NOW)
        identity |= {
            "ca_certificate": ca.cert_pem.decode(),
            "client_certificate": issued.cert_pem.decode(),
            "client_key": issued.key_pem.decode(),
        }
    return identity


async def test_every_report_is_signed_with_the_cars_key(car: Car, server: FakeServer) -> None:
    key = generate_report_key()
    config = replace(server.agent_config(car.state_dir), report_key=private_key_pem(key))
    link = FakeLink(VIN)
    agent = Agent(config, link=link, transport=server.transport)
    server.assign({SERIAL: server.release("2.0", 2)})

    await agent.handle(server.notice())

    assert len(link.reports) == 6
    for report in link.reports:
        verify_report(report, key.public_key)


def test_a_bad_report_key_is_a_config_error(car: Car, server: FakeServer) -> None:
    config = replace(server.agent_config(car.state_dir), report_key=b"-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(ConfigError, match="report key"):
        Agent(config, link=FakeLink(VIN), transport=server.transport)


def test_provisioned_bundle_loads_and_round_trips(server: FakeServer, tmp_path: Path) -> None:
    identity = _identity(server, certificate=True, mqtt_url="mqtts://broker.test:8883")
    path = write_bundle(tmp_path / "car", identity)

    config = load_config(path)
    assert config.report_key == identity["report_private_key"].encode()
    assert config.tls_ca is not None and config.tls_ca.read_text() == identity["ca_certificate"]
    assert config.tls_key is not None and config.tls_key.stat().st_mode & 0o077 == 0
    context = tls_context(config)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode is ssl.CERT_REQUIRED

    write_config(config, tmp_path / "copy" / "agent.toml")
    again = load_config(tmp_path / "copy" / "agent.toml")
    assert (again.report_key, again.tls_cert, again.tls_key) == (config.report_key, config.tls_cert, config.tls_key)


def test_plain_mqtt_needs_no_tls_and_half_a_certificate_is_refused(server: FakeServer, tmp_path: Path) -> None:
    path = write_bundle(tmp_path, _identity(server, certificate=False))
    config = load_config(path)
    assert tls_context(config) is None
    assert config.tls_cert is None

    path.write_text('tls_cert = "agent.toml"\n' + path.read_text())  # a certificate without its key
    with pytest.raises(ConfigError, match="go together"):
        load_config(path)
