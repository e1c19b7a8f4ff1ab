"""The Image repository's metadata carried in the notice (issue #19): the real python-tuf checks, once.

The same for every car, checked exactly as the Director's carried files are: passing ones
replace the three Image requests; forged, replayed or expired ones are refused with their
precise reason, leave the trusted Image metadata as it was, and the car fetches over HTTP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta

import pytest

from firmware_bundles import repo_paths
from firmware_bundles.messages import ImageMetadata, ReportState

from .conftest import Car
from .fakes import REPO, SERIAL, FakeServer

S = ReportState
IMAGE = repo_paths.image_metadata_url(REPO)
CHAIN = ("timestamp.json", "snapshot.json", "targets.json")


def carried(published: Mapping[str, bytes]) -> ImageMetadata:
    return ImageMetadata(**{name.removesuffix(".json"): published[name].decode() for name in CHAIN})


def image_chain_requests(server: FakeServer) -> list[str]:
    return [url for url in server.transport.requests if url.startswith(IMAGE) and url.endswith(CHAIN)]


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "carried Image metadata refused" in r.getMessage()]


async def test_carried_image_metadata_replaces_the_three_image_requests(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    published = server.publish_image()
    for name in CHAIN:  # not on the server at all: only the notice has them
        del server.transport.files[IMAGE + name]

    assert await car.agent.handle(server.notice(1, image_metadata=carried(published))) is S.REMEDIED

    assert car.running_version() == "2.0"
    assert image_chain_requests(server) == []
    assert IMAGE + "2.root.json" in server.transport.requests  # the root probe still goes to the network
    trusted = car.state_dir / "metadata" / "image" / "timestamp.json"
    assert trusted.read_bytes() == published["timestamp.json"]


async def test_forged_carried_image_targets_are_refused_and_fetched_over_http(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    published = server.publish_image()
    targets = json.loads(published["targets.json"])
    for info in targets["signed"]["targets"].values():
        info["length"] += 1  # the signature no longer covers it
    forged = carried({**published, "targets.json": json.dumps(targets).encode()})

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(1, image_metadata=forged)) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_signature_invalid:" in refusal
    assert IMAGE + "targets.json" in image_chain_requests(server)  # fetched, genuine
    assert car.running_version() == "2.0"
    trusted = json.loads((car.state_dir / "metadata" / "image" / "targets.json").read_bytes())
    assert trusted == json.loads(published["targets.json"])  # nothing kept from the forged copy


async def test_replayed_older_carried_image_metadata_is_a_rollback(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    first = server.publish_image()
    server.release("2.5", 3)  # the Image repository moves on
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED  # fetched: the car trusts a newer Image chain
    server.assign({SERIAL: server.release("3.0", 4)})

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(2, image_metadata=carried(first))) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_rollback:" in refusal
    assert car.running_version() == "3.0"


async def test_replayed_current_carried_image_metadata_is_refused(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The Image chain the car already trusts, carried again: python-tuf would keep it silently,
    the car refuses it (it could hide a newer release) and asks the server."""
    two = server.release("2.0", 2)
    three = server.release("3.0", 3)
    server.assign({SERIAL: two})
    current = server.publish_image()
    assert await car.agent.handle(server.notice(1, image_metadata=carried(current))) is S.REMEDIED
    server.assign({SERIAL: three})

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(2, image_metadata=carried(current))) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_rollback:" in refusal
    assert car.running_version() == "3.0"


async def test_expired_carried_image_metadata_is_refused(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    stale = server.publish_image(now=server.now - timedelta(days=400))
    server.publish_image()  # the server's current chain, fresh

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(1, image_metadata=carried(stale))) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_expired:" in refusal
    assert car.running_version() == "2.0"


async def test_a_notice_without_image_metadata_fetches_as_before(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED
    assert car.running_version() == "2.0"
    assert sorted(url.rpartition("/")[2] for url in image_chain_requests(server)) == sorted(CHAIN)
