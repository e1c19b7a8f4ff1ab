"""A tampered or injected broker message: MQTT notices are hints, so whatever an attacker who
controls the broker publishes, the car installs only what the signed metadata says."""

from __future__ import annotations

import json

import pytest

from firmware_bundles.messages import encode
from firmware_bundles.uptane import bundle_target_path
from tests.vehicle_agent.conftest import Car
from tests.vehicle_agent.fakes import HW, OTHER_VIN, REPO, SERIAL, FakeServer

from .harness import R, S, genuine_update_succeeds

EVIL = "http://evil.test/repo"


def garbage(server: FakeServer) -> list[bytes]:
    """Payloads that never become a notice."""
    genuine = json.loads(encode(server.notice(5)))
    return [
        b"",
        b"\x00\xff" * 512,
        b"{not json",
        b"[]",
        json.dumps({**genuine, "vin": OTHER_VIN}).encode(),  # someone else's notice
        json.dumps({**genuine, "kind": "status"}).encode(),
        json.dumps({**genuine, "schema_version": 99}).encode(),
        json.dumps({**genuine, "campaign_id": -1}).encode(),
        json.dumps({**genuine, "unexpected": "field"}).encode(),
        json.dumps({**genuine, "title": "x" * 1_000_000}).encode(),  # oversized
    ]


@pytest.mark.parametrize(
    ("director", "reason"),
    [("assigns nothing", R.NO_DIRECTOR_ASSIGNMENT), ("never published", R.METADATA_FETCH_FAILED)],
)
async def test_injected_notices_install_nothing_and_crash_nothing(
    car: Car, server: FakeServer, director: str, reason: R
) -> None:
    """Garbage and notices for other cars are dropped at the link; a well-formed notice pointing at
    nothing (an invented campaign, an attacker's mirror, no Director assignment) ends ``failed``
    with a precise reason, fetches nothing from the mirror, and the car keeps listening."""
    if director == "assigns nothing":
        server.assign({})
    server.release("2.0", 2)
    junk = garbage(server)
    for payload in junk:
        car.link.deliver(payload)
    forged = server.notice(666).model_copy(update={"repo_url": EVIL, "recall_number": "99V-999"})
    car.link.deliver(forged)
    car.link.close()

    await car.agent.run()  # returns only because the link closed: nothing raised

    assert car.link.malformed == len(junk)
    assert {r.campaign_id for r in car.link.reports} == {666}
    last = car.link.reports[-1]
    assert (last.state, last.reason) == (S.FAILED, reason), last.detail
    assert S.INSTALLING not in car.states
    assert not any(url.startswith(EVIL) for url in server.transport.requests), "the notice's URL is not trusted"
    assert all(url.startswith(REPO) for url in server.transport.requests)
    car.assert_untouched()

    # the genuine campaign then arrives on the same link and is installed
    car.build()
    server.assign({SERIAL: server.image_targets[bundle_target_path(HW, "2.0")]})
    car.link.deliver(server.notice(7))
    car.link.close()
    await car.agent.run()
    assert [r.state for r in car.link.reports if r.campaign_id == 7][-1] is S.REMEDIED
    assert car.running_version() == "2.0"
    await genuine_update_succeeds(car, server)
