"""Attacks by whoever sits on the network path or runs a mirror: eavesdrop, drop-request,
slow retrieval, endless data and a connection cut mid-bundle."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
from securesystemslib.signer import CryptoSigner

from firmware_bundles import repo_paths
from firmware_bundles.messages import encode
from firmware_bundles.report_signing import generate_report_key, private_key_pem
from firmware_bundles.uptane import RoleSigners, bundle_target_path
from tests.vehicle_agent.conftest import Car
from tests.vehicle_agent.fakes import HW, REPO, SERIAL, FakeServer
from vehicle_agent.agent import Agent

from .harness import DIRECTOR, IMAGE, DroppingTransport, R, Repository, S, genuine_update_succeeds, refused


def secret_forms(signer: CryptoSigner) -> list[bytes]:
    """Every spelling of a private key an eavesdropper could find: PEM body, raw bytes, hex, base64."""
    pem = signer.private_bytes
    key = load_pem_private_key(pem, password=None)
    forms = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    if isinstance(key, Ed25519PrivateKey):
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        forms += [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]
    return forms


def all_signers(*sets: RoleSigners) -> list[CryptoSigner]:
    found = []
    for role_signers in sets:
        for role in ("root", "targets", "snapshot", "timestamp"):
            found += [s for s in role_signers.for_role(role) if isinstance(s, CryptoSigner)]
    return found


async def test_eavesdrop_sees_only_public_signed_data_over_plain_http(server: FakeServer, tmp_path: Path) -> None:
    """What the car fetches and hears needs no secrecy: no key in it, and plain HTTP is enough
    because every byte is checked against signed metadata end to end."""
    report_key = generate_report_key()
    car = Car(server, tmp_path / "car")
    config = replace(server.agent_config(car.state_dir), report_key=private_key_pem(report_key))
    car.agent = Agent(config, link=car.link, transport=server.transport)  # signs its reports
    server.assign({SERIAL: server.release("2.0", 2)})
    notice = server.notice(1)
    assert await car.agent.handle(notice) is S.REMEDIED

    heard = [encode(notice), *(encode(r) for r in car.link.reports)]
    fetched = [body for url in server.transport.requests if isinstance(body := server.transport.files.get(url), bytes)]
    assert len(fetched) == 7, "timestamp, snapshot and targets of both repositories, and the bundle"
    assert all(url.startswith("http://") for url in server.transport.requests), "no TLS was needed"
    everything = b"\n".join(heard + fetched)
    assert b"PRIVATE KEY" not in everything
    secrets = [*all_signers(server.image_signers, server.director_signers), report_key]
    for signer in secrets:
        for form in secret_forms(signer):
            assert form not in everything, f"a private key of {signer.public_key.keyid[:8]} is on the wire"


WITHHELD = {
    "director timestamp": (DIRECTOR.metadata_url() + "timestamp.json", R.METADATA_FETCH_FAILED),
    "director targets": (DIRECTOR.metadata_url() + "targets.json", R.METADATA_FETCH_FAILED),
    "image snapshot": (IMAGE.metadata_url() + "snapshot.json", R.METADATA_FETCH_FAILED),
    "image targets": (IMAGE.metadata_url() + "targets.json", R.METADATA_FETCH_FAILED),
    "the bundle": (repo_paths.targets_url(REPO) + bundle_target_path(HW, "2.0"), R.DOWNLOAD_FAILED),
}


@pytest.mark.parametrize("what", WITHHELD)
async def test_drop_request_is_detected_and_reported(car: Car, server: FakeServer, what: str) -> None:
    """The repository (or a man in the middle) withholds one file: the car says which step starved."""
    server.assign({SERIAL: server.release("2.0", 2)})
    url, reason = WITHHELD[what]
    withheld = server.transport.files.pop(url)
    report = await refused(car, server, reason)
    assert url.rsplit("/", 1)[-1] in report.detail
    car.assert_untouched()
    server.transport.files[url] = withheld
    await genuine_update_succeeds(car, server)


async def test_slow_retrieval_of_metadata_is_cut_off(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    url = DIRECTOR.metadata_url() + "timestamp.json"
    genuine = server.transport.files[url]
    assert isinstance(genuine, bytes)
    now = [0.0]

    def trickle() -> Iterator[bytes]:
        for i in range(len(genuine)):
            now[0] += 60.0  # one byte a minute, in simulated time
            yield genuine[i : i + 1]

    server.transport.files[url] = trickle
    car.build(monotonic=lambda: now[0])
    await refused(car, server, R.DOWNLOAD_TOO_SLOW)
    car.assert_untouched()
    server.transport.files[url] = genuine
    car.build()
    await genuine_update_succeeds(car, server)


@pytest.mark.parametrize(
    ("repository", "name"),
    [(DIRECTOR, "timestamp.json"), (IMAGE, "snapshot.json")],
    ids=["director timestamp", "image snapshot"],
)
async def test_endless_metadata_is_cut_off_at_the_client_limit(
    car: Car, server: FakeServer, repository: Repository, name: str
) -> None:
    """An endless timestamp or snapshot stops at python-tuf's length cap; nothing is installed.

    The reason is ``length_mismatch`` (python-tuf's DownloadLengthMismatchError), told apart
    from an outage and not retried; the detail names the length error.
    """
    server.assign({SERIAL: server.release("2.0", 2)})
    url = repository.metadata_url() + name
    genuine = server.transport.files[url]
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while True:
            sent += 4096
            yield b" " * 4096

    server.transport.files[url] = endless
    report = await refused(car, server, R.LENGTH_MISMATCH)
    assert "DownloadLengthMismatchError" in report.detail
    # an attack, not an outage: reported at once, not retried
    assert sent <= 2_000_000 + 4096, "the request stopped at the client's cap"
    car.assert_untouched()
    server.transport.files[url] = genuine
    await genuine_update_succeeds(car, server)


async def test_connection_cut_mid_bundle_installs_nothing_and_resumes_later(server: FakeServer, tmp_path: Path) -> None:
    """Partial bundle installation: the connection drops half way through the bundle on every try.
    Nothing is switched; once the network heals, the download resumes from the kept bytes."""
    server.transport = DroppingTransport(server.transport.files)
    assert isinstance(server.transport, DroppingTransport)
    car = Car(server, tmp_path / "car")
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    half = target.length // 2
    server.transport.url = repo_paths.targets_url(REPO) + target.path
    server.transport.drop_at = half

    await refused(car, server, R.DOWNLOAD_FAILED)
    assert "connection reset" in car.link.reports[-1].detail
    assert car.slots.booted_slot() == car.slots.active_slot() == "a"
    assert car.slots.pending_try() is None
    assert (car.slots.directory / "slot_b.img").read_bytes() == b"", "the spare slot was never written"
    part = tmp_path / "car" / "downloads" / f"{target.hashes['sha256']}.part"
    assert part.stat().st_size == half, "the bytes received are kept to resume"

    server.transport.drop_at = None
    server.transport.starts.clear()
    server.transport.requests.clear()
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED  # the campaign again, with a new nonce
    bundle_starts = [
        start
        for url, start in zip(server.transport.requests, server.transport.starts, strict=True)
        if url == server.transport.url
    ]
    assert bundle_starts == [half], "resumed with a Range request, not from zero"
    assert car.running_version() == "2.0"
    await genuine_update_succeeds(car, server)
