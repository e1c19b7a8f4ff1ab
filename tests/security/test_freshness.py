"""Stale or mixed metadata: freeze, partial freeze, timestamp/snapshot/targets rollback (also by an
attacker holding the online timestamp or snapshot key) and mix-and-match of repository states."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tuf.api.metadata import Metadata

from tests.vehicle_agent.conftest import Car
from tests.vehicle_agent.fakes import SERIAL, FakeServer

from .harness import (
    BOTH,
    DIRECTOR,
    IMAGE,
    R,
    Repository,
    S,
    genuine_update_succeeds,
    in_days,
    refused,
    snapshot,
    timestamp,
)

FROZEN = {"image": (IMAGE,), "director": (DIRECTOR,), "both": BOTH}


@pytest.mark.parametrize("frozen", FROZEN)
async def test_freeze_replaying_captured_metadata_is_refused_once_its_timestamp_lapsed(
    car: Car, server: FakeServer, frozen: str
) -> None:
    """A mirror keeps serving what it captured two days ago (every signature genuine, targets and
    snapshot still valid) while the repositories moved on: only the short-lived timestamp betrays
    it. ``image``/``director`` is the partial freeze: the other repository is current."""
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    two_days_ago = server.now - timedelta(days=2)
    captured = {
        IMAGE: server.publish_image(now=two_days_ago),
        DIRECTOR: server.assign({SERIAL: target}, now=two_days_ago),
    }
    server.publish_image()  # the repositories move on; the car is never shown this
    server.assign({SERIAL: target})
    for repository in FROZEN[frozen]:
        repository.serve(server, captured[repository])

    report = await refused(car, server, R.METADATA_EXPIRED)
    assert ("director" if frozen != "image" else "image repository") in report.detail
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


ATTACKS = ("timestamp rollback", "snapshot rollback", "targets rollback", "mix and match")


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("repository", BOTH, ids=lambda r: r.name)
async def test_older_or_mixed_metadata_is_a_rollback(
    car: Car, server: FakeServer, repository: Repository, attack: str
) -> None:
    """After the car trusted version N, the attacker serves older metadata:

    * ``timestamp rollback``: a genuine older timestamp, replayed;
    * ``snapshot rollback``: a new timestamp signed with the stolen online timestamp key, pointing
      at an older genuine snapshot;
    * ``targets rollback``: stolen timestamp and snapshot keys, a new snapshot pointing at older
      genuine targets;
    * ``mix and match``: the current timestamp and snapshot with targets from an older state.
    """
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    old = repository.publish(server, target)  # version O, captured by the attacker
    repository.publish(server, target)  # version O+1
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED  # the car now trusts O+1
    server.assign({SERIAL: server.release("3.0", 3)})  # the genuine current state, version O+2
    o = _version(old["timestamp.json"])
    stolen = repository.signers(server)
    expires = in_days(server, 1)
    if attack == "timestamp rollback":
        repository.serve(server, {"timestamp.json": old["timestamp.json"]})
    elif attack == "snapshot rollback":
        forged = timestamp(o + 2, o, stolen.timestamp, expires)
        repository.serve(server, {"timestamp.json": forged, "snapshot.json": old["snapshot.json"]})
        repository.serve(server, {"targets.json": old["targets.json"]})
    elif attack == "targets rollback":
        repository.serve(
            server,
            {
                "timestamp.json": timestamp(o + 2, o + 2, stolen.timestamp, expires),
                "snapshot.json": snapshot(o + 2, o, stolen.snapshot, expires),
                "targets.json": old["targets.json"],
            },
        )
    else:
        repository.serve(server, {"targets.json": old["targets.json"]})

    await refused(car, server, R.METADATA_ROLLBACK, campaign_id=2, installed="2.0")
    car.assert_untouched("2.0", spare=None)
    await genuine_update_succeeds(car, server, "4.0")


def _version(data: bytes) -> int:
    return Metadata.from_bytes(data).signed.version
