"""The agent renews its client certificate before it expires (issue 15, item 2), on simulated time.

The fake server below does what ``POST /api/v1/vehicles/{vin}/certificate/renew`` does
(tests/ota_server/test_identity.py runs the real one): check the current key's
signature over the CSR, issue a certificate for the CSR's key.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware_bundles.vin import make_vin
from ota_server.infra.pki import CertificateAuthority
from vehicle_agent.config import AgentConfig, EcuConfig, RenewalOptions
from vehicle_agent.renewal import CertificateRenewer, RenewalFailed, recover

VIN = make_vin("1HG", "CM826", "N", "A", 301)
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class FakeServer:
    def __init__(self, ca: CertificateAuthority, clock: Clock) -> None:
        self.ca, self.clock = ca, clock
        self.requests: list[tuple[str, Mapping[str, str]]] = []
        self.lose_answers = 0

    async def post(self, url: str, body: Mapping[str, str]) -> Mapping[str, Any]:
        self.requests.append((url, body))
        csr = x509.load_pem_x509_csr(body["csr"].encode())
        current = x509.load_pem_x509_certificate(body["certificate"].encode())
        key = current.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(
            base64.b64decode(body["signature"]),
            csr.public_bytes(serialization.Encoding.DER),
            ec.ECDSA(hashes.SHA256()),
        )
        new_key = csr.public_key()
        assert isinstance(new_key, ec.EllipticCurvePublicKey)
        pem = self.ca.issue_client_for(VIN, new_key, self.clock())
        if self.lose_answers:
            self.lose_answers -= 1
            raise ConnectionError("the answer was lost")
        return {"client_certificate": pem.decode()}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(START - timedelta(days=1))


def _config(tmp_path: Path, ca: CertificateAuthority, **renewal: Any) -> AgentConfig:
    issued = ca.issue_client(VIN, START)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "client.crt").write_bytes(issued.cert_pem)
    (tmp_path / "client.key").write_bytes(issued.key_pem)
    return AgentConfig(
        vin=VIN,
        ecus=(EcuConfig("S1", "hw", "1.0"),),
        mqtt_url="mqtts://broker.test:8883",
        repo_url="https://ota.test/repo",
        state_dir=tmp_path / "state",
        image_root=b"",
        director_root=b"",
        tls_ca=tmp_path / "ca.crt",
        tls_cert=tmp_path / "client.crt",
        tls_key=tmp_path / "client.key",
        renewal=RenewalOptions(**renewal),
    )


def _read(path: Path | None) -> bytes:
    assert path is not None
    return path.read_bytes()


def _leftovers(directory: Path) -> list[Path]:
    return list(directory.glob("*.next"))


def _pair_matches(config: AgentConfig) -> bool:
    assert config.tls_cert is not None and config.tls_key is not None
    cert = x509.load_pem_x509_certificate(config.tls_cert.read_bytes())
    key = serialization.load_pem_private_key(config.tls_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert.public_key() == key.public_key()


async def test_the_certificate_is_renewed_only_once_it_nears_its_end(
    tmp_path: Path, ca: CertificateAuthority, clock: Clock
) -> None:
    config = _config(tmp_path, ca)
    server = FakeServer(ca, clock)
    context = ssl.create_default_context(cafile=config.tls_ca)
    renewer = CertificateRenewer(config, server.post, clock=clock, tls_context=context)
    assert renewer.url == f"https://ota.test/api/v1/vehicles/{VIN}/certificate/renew"
    old_end = renewer.not_after()
    assert old_end == x509.load_pem_x509_certificate(_read(config.tls_cert)).not_valid_after_utc  # read by ssl

    clock.now = old_end - timedelta(days=31)
    assert not await renewer.check() and server.requests == []
    clock.now = old_end - timedelta(days=29)
    assert await renewer.check()
    assert renewer.not_after() > old_end and _pair_matches(config)
    assert not await renewer.check()  # the new one is far from its end
    assert len(server.requests) == 1
    assert _leftovers(tmp_path) == []


async def test_a_lost_answer_is_asked_again_for_the_same_key(
    tmp_path: Path, ca: CertificateAuthority, clock: Clock
) -> None:
    config = _config(tmp_path, ca)
    server = FakeServer(ca, clock)
    server.lose_answers = 1
    renewer = CertificateRenewer(config, server.post, clock=clock)
    clock.now = renewer.not_after() - timedelta(days=1)
    old = config.tls_cert.read_bytes() if config.tls_cert else b""
    with pytest.raises(ConnectionError):
        await renewer.check()
    assert config.tls_cert is not None and config.tls_cert.read_bytes() == old and _pair_matches(config)
    assert await renewer.check()
    keys = [x509.load_pem_x509_csr(body["csr"].encode()).public_key() for _, body in server.requests]
    assert len(keys) == 2 and keys[0] == keys[1]  # the server answers a repeated renewal again
    assert _pair_matches(config)


async def test_a_crash_between_the_certificate_and_the_key_is_finished_at_start(
    tmp_path: Path, ca: CertificateAuthority, clock: Clock
) -> None:
    config = _config(tmp_path, ca)
    assert config.tls_cert is not None and config.tls_key is not None
    new_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = new_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "client.key.next").write_bytes(key_pem)
    config.tls_cert.write_bytes(ca.issue_client_for(VIN, new_key.public_key(), START))  # crash here
    assert not _pair_matches(config)
    recover(config.tls_cert, config.tls_key)
    assert _pair_matches(config) and config.tls_key.read_bytes() == key_pem


async def test_an_answer_for_another_key_is_refused(tmp_path: Path, ca: CertificateAuthority, clock: Clock) -> None:
    config = _config(tmp_path, ca)

    async def wrong(url: str, body: Mapping[str, str]) -> Mapping[str, Any]:
        return {"client_certificate": ca.issue_client(VIN, clock()).cert_pem.decode()}

    renewer = CertificateRenewer(config, wrong, clock=clock)
    clock.now = renewer.not_after() - timedelta(days=1)
    with pytest.raises(RenewalFailed):
        await renewer.check()
    assert _pair_matches(config)


async def test_run_checks_at_start_and_daily_and_retries_within_the_hour(
    tmp_path: Path, ca: CertificateAuthority, clock: Clock
) -> None:
    config = _config(tmp_path, ca, renew_before_days=10)
    server = FakeServer(ca, clock)
    server.lose_answers = 1
    slept: list[float] = []
    end = CertificateRenewer(config, server.post, clock=clock).not_after()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += timedelta(seconds=seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError

    clock.now = end - timedelta(days=10.5)
    renewer = CertificateRenewer(config, server.post, clock=clock, sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await renewer.run()
    # 10.5 days before the end: not due; a day later: due, the answer lost; an hour later: renewed
    assert slept == [86_400.0, 3600.0, 86_400.0]
    assert len(server.requests) == 2 and renewer.not_after() > end
