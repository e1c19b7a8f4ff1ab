"""Eavesdropping on the real server: everything a car receives (the notice, both repositories'
metadata, the bundle) is served over plain HTTP by the in-process server, carries no secret of
the server or of any car, and still verifies end to end, so the real agent installs it."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
from securesystemslib.signer import CryptoSigner

from firmware_bundles.messages import parse_notice
from ota_server.config import Settings
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import REPORT_KEYS, launched, vin
from vehicle_agent.agent import Agent
from vehicle_agent.config import config_from_agent_config
from vehicle_agent.errors import FetchError
from vehicle_agent.link import FakeLink
from vehicle_agent.transport import Chunks

from .harness import S

_PEM = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S)


class Eavesdropper:
    """The car's transport: plain HTTP to the in-process server, every answer recorded.

    The agent fetches from worker threads; each request is handed to the test's event loop,
    where the server's ASGI client lives.
    """

    def __init__(self, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self.recorded: dict[str, bytes] = {}

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        assert url.startswith("http://"), url
        headers = {"Range": f"bytes={start}-"} if start else None
        future = asyncio.run_coroutine_threadsafe(self._client.get(url, headers=headers), self._loop)
        response = future.result(timeout=60)
        if response.status_code >= 400:
            raise FetchError(url, f"HTTP {response.status_code}", response.status_code)
        self.recorded[url] = response.content
        yield Chunks(iter([response.content]), start if response.status_code == 206 else 0)


def secrets_on_disk(settings: Settings) -> list[bytes]:
    """Every private key the server keeps under its data directory (signing keys, CA), in every
    spelling an eavesdropper could match, and the admin token."""
    found: list[bytes] = []
    for path in settings.data_dir.rglob("*"):
        if not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        for pem in _PEM.findall(path.read_bytes()):
            found += key_forms(pem)
    found.append(settings.admin_token_file.read_bytes().strip())
    return found


def key_forms(pem: bytes) -> list[bytes]:
    forms = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    key = load_pem_private_key(pem, password=None)
    raw: bytes | None = None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    if raw is not None:
        forms += [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]
    return forms


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running(make_settings(tmp_path / "server")) as env:
        yield env


async def test_what_a_car_receives_is_public_signed_and_enough_over_plain_http(env: Env, tmp_path: Path) -> None:
    env.clock.now = datetime.now(UTC)  # the car checks expiry against the real clock
    car_vin = vin(1)
    await launched(env.client, [car_vin])
    await env.nonces()
    notices = [m.payload for m in env.publisher.messages]
    notice = parse_notice(notices[-1])
    doc = (await env.client.get(f"/api/v1/vehicles/{car_vin}/agent-config")).json()
    doc["mqtt_url"] = doc["mqtt_url"] or "mqtt://broker.test:1883"  # no broker in-process; not used here
    config = config_from_agent_config(doc, tmp_path / "car")
    assert config.repo_url.startswith("http://"), "the repository needs no TLS"

    eavesdropper = Eavesdropper(env.client, asyncio.get_running_loop())
    link = FakeLink(car_vin)
    agent = Agent(config, link=link, transport=eavesdropper, download_sleep=lambda _s: None)
    assert await agent.handle(notice) is S.REMEDIED, link.reports[-1].detail

    names = {url.rsplit("/", 1)[-1] for url in eavesdropper.recorded}
    assert {"timestamp.json", "snapshot.json", "targets.json", "1.1.0.otab"} <= names
    everything = b"\n".join([*notices, *eavesdropper.recorded.values()])
    assert b"PRIVATE KEY" not in everything
    secrets = secrets_on_disk(env.runtime.settings)
    secrets += [form for key in REPORT_KEYS.values() for form in _signer_forms(key)]
    assert len(secrets) > 10, "the server's keys were found to look for"
    leaked = [s[:12] for s in secrets if s in everything]
    assert not leaked, f"secrets on the wire: {leaked}"


def _signer_forms(signer: CryptoSigner) -> list[bytes]:
    return key_forms(signer.private_bytes)
