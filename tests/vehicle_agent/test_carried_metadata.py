"""Director metadata carried in the notice (issue #19): the real python-tuf checks, once.

The notice's timestamp, snapshot and targets replace three requests when they pass every
check python-tuf makes of fetched ones. When they fail (forged, replayed, expired, another
car's), the car logs the precise reason, keeps its trusted metadata as it was and fetches
over HTTP, so whoever can write to MQTT can cost a car a request but never block or steer it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_bundles import repo_paths
from firmware_bundles.errors import MalformedMessage
from firmware_bundles.messages import (
    CARRIED_FILE_CHARS,
    MAX_MESSAGE_BYTES,
    DirectorMetadata,
    FailureReason,
    ReportState,
    encode,
    parse_notice,
)
from vehicle_agent import verifier

from .conftest import Car
from .fakes import OTHER_VIN, REPO, SERIAL, VIN, FakeServer

S = ReportState
R = FailureReason
DIRECTOR = repo_paths.director_metadata_url(REPO, VIN)
CHAIN = ("timestamp.json", "snapshot.json", "targets.json")


def carried(published: Mapping[str, bytes]) -> DirectorMetadata:
    return DirectorMetadata(
        timestamp=published["timestamp.json"].decode(),
        snapshot=published["snapshot.json"].decode(),
        targets=published["targets.json"].decode(),
    )


def director_chain_requests(server: FakeServer) -> list[str]:
    return [url for url in server.transport.requests if url.startswith(DIRECTOR) and url.endswith(CHAIN)]


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "carried Director metadata refused" in r.getMessage()]


async def test_carried_metadata_replaces_the_three_director_requests(car: Car, server: FakeServer) -> None:
    published = server.assign({SERIAL: server.release("2.0", 2)})
    for name in CHAIN:  # not on the server at all: only the notice has them
        del server.transport.files[DIRECTOR + name]

    assert await car.agent.handle(server.notice(1, director_metadata=carried(published))) is S.REMEDIED

    assert car.running_version() == "2.0"
    assert director_chain_requests(server) == []
    # the root probe still goes to the network: a rotated root is found as before
    assert DIRECTOR + "2.root.json" in server.transport.requests
    # what was carried is now trusted, as if fetched: the next refresh starts from it
    trusted = car.state_dir / "metadata" / "director" / "timestamp.json"
    assert trusted.read_bytes() == published["timestamp.json"]


async def test_carried_metadata_is_used_once_then_fetched(car: Car, server: FakeServer) -> None:
    published = server.assign({SERIAL: server.release("2.0", 2)})
    notice = server.notice(1, director_metadata=carried(published), requires_consent=False)
    assert await car.agent.handle(notice) is S.REMEDIED
    # the same notice again (retained, redelivered): done already, nothing verified again
    assert await car.agent.handle(notice) is S.REMEDIED
    assert director_chain_requests(server) == []


async def test_tampered_carried_targets_are_refused_and_fetched_over_http(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    published = server.assign({SERIAL: server.release("2.0", 2)})
    targets = json.loads(published["targets.json"])
    for info in targets["signed"]["targets"].values():
        info["length"] += 1  # the signature no longer covers it
    tampered = carried({**published, "targets.json": json.dumps(targets).encode()})

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(1, director_metadata=tampered)) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_signature_invalid:" in refusal
    assert DIRECTOR + "targets.json" in director_chain_requests(server)  # fetched, genuine
    assert car.running_version() == "2.0"


async def test_tampered_carried_targets_install_nothing(car: Car, server: FakeServer) -> None:
    """The network is no better: the car fails with the signature's reason and stays as it was."""
    published = server.assign({SERIAL: server.release("2.0", 2)})
    targets = json.loads(published["targets.json"])
    for info in targets["signed"]["targets"].values():
        info["length"] += 1
    forged = json.dumps(targets).encode()
    server.transport.files[DIRECTOR + "targets.json"] = forged

    notice = server.notice(1, director_metadata=carried({**published, "targets.json": forged}))
    assert await car.agent.handle(notice) is S.FAILED

    assert car.link.reports[-1].reason is R.METADATA_SIGNATURE_INVALID
    car.assert_untouched()


async def test_replayed_older_carried_metadata_is_a_rollback(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    first = server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice(1, director_metadata=carried(first))) is S.REMEDIED
    server.assign({SERIAL: server.release("3.0", 3)})
    assert await car.agent.handle(server.notice(2)) is S.REMEDIED  # fetched: the car trusts version 2
    server.assign({SERIAL: server.release("4.0", 4)})

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(3, director_metadata=carried(first))) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_rollback:" in refusal
    assert car.running_version() == "4.0"  # the current assignment, fetched over HTTP


async def test_replayed_current_carried_metadata_cannot_freeze_the_car(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The chain the car already trusts, carried again: python-tuf would keep it silently;
    the car refuses it as a replay and asks the server, which has the newer assignment."""
    first = server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice(1, director_metadata=carried(first))) is S.REMEDIED
    server.assign({SERIAL: server.release("3.0", 3)})

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(2, director_metadata=carried(first))) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_rollback:" in refusal
    assert car.running_version() == "3.0"


async def test_expired_carried_metadata_is_refused(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    target = server.release("2.0", 2)
    stale = server.assign({SERIAL: target}, now=server.now - timedelta(days=400))
    server.assign({SERIAL: target})  # the server's current chain, fresh

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(1, director_metadata=carried(stale))) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(metadata_expired:" in refusal
    assert car.running_version() == "2.0"


async def test_another_cars_carried_metadata_is_refused_and_leaves_no_trace(
    car: Car, server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Validly signed by the one Director key, with higher versions than this car's chain: had
    python-tuf kept it, this car's own chain would look like a rollback from then on."""
    target = server.release("2.0", 2)
    for _ in range(3):
        other = server.assign({SERIAL: target}, vin=OTHER_VIN)
    server.assign({SERIAL: target})  # this car's chain: version 1

    with caplog.at_level(logging.WARNING, logger="vehicle_agent.verifier"):
        assert await car.agent.handle(server.notice(1, director_metadata=carried(other))) is S.REMEDIED

    (refusal,) = refusals(caplog)
    assert "(not_for_this_vehicle:" in refusal
    assert car.running_version() == "2.0"
    trusted = json.loads((car.state_dir / "metadata" / "director" / "timestamp.json").read_bytes())
    assert trusted["signed"]["version"] == 1


def test_an_oversized_notice_is_dropped_at_parse(server: FakeServer) -> None:
    big = "x" * (CARRIED_FILE_CHARS - 16)
    notice = server.notice(1, director_metadata=DirectorMetadata(timestamp=big, snapshot=big, targets=big))
    payload = encode(notice)
    assert len(payload) > MAX_MESSAGE_BYTES
    with pytest.raises(MalformedMessage, match="exceeds"):
        parse_notice(payload)


def test_a_carried_file_past_its_bound_is_refused(server: FakeServer) -> None:
    small = "{}"
    body = json.loads(encode(server.notice(1)))
    body["director_metadata"] = {"timestamp": small, "snapshot": small, "targets": "x" * (CARRIED_FILE_CHARS + 1)}
    with pytest.raises(MalformedMessage, match=r"director_metadata\.targets"):
        parse_notice(json.dumps(body).encode())


def test_a_notice_without_carried_metadata_is_encoded_as_before(server: FakeServer) -> None:
    """Old agents parse strictly: a notice without the field has no trace of it."""
    payload = encode(server.notice(1))
    assert b"director_metadata" not in payload
    assert parse_notice(payload).director_metadata is None


def test_verified_files_replace_the_trusted_ones_root_history_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a carried refresh verified moves over what the car trusts, in TUF's order: the root
    history and root first, then timestamp, snapshot, targets; the symlinked root stays a link."""
    scratch, trusted = tmp_path / "scratch", tmp_path / "trusted"
    (scratch / "root_history").mkdir(parents=True)
    (scratch / "root_history" / "2.root.json").write_text("root 2")
    (scratch / "root.json").symlink_to("root_history/2.root.json")
    for name in ("targets.json", "snapshot.json", "timestamp.json"):
        (scratch / name).write_text(name)
    moved: list[str] = []
    replace = os.replace

    def recording(source: str, target: str) -> None:
        moved.append(os.path.relpath(target, trusted))
        replace(source, target)

    monkeypatch.setattr(os, "replace", recording)
    verifier._keep(scratch, trusted)

    assert moved == ["root_history/2.root.json", "root.json", "timestamp.json", "snapshot.json", "targets.json"]
    assert (trusted / "root.json").is_symlink() and (trusted / "root.json").read_text() == "root 2"
    assert (trusted / "targets.json").read_text() == "targets.json"
    assert not [p for p in scratch.rglob("*") if not p.is_dir()]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"signed": {"version": 7}}', 7),
        ('{"signed": {"version": true}}', None),
        ('{"signed": {"version": "7"}}', None),
        ('{"signed": []}', None),
        ("[]", None),
        ("{torn", None),
        (None, None),
    ],
)
def test_the_trusted_timestamp_version_is_read_or_none(tmp_path: Path, body: str | None, expected: int | None) -> None:
    if body is not None:
        (tmp_path / "timestamp.json").write_text(body)
    assert verifier._timestamp_version(tmp_path) == expected


def test_a_verified_file_is_replaced_whole_and_a_failed_write_leaves_the_old_one_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How the agent's python-tuf writes what it verified (verifier.LeanUpdater): old or new, never torn."""
    target = tmp_path / "timestamp.json"
    persist = verifier.LeanUpdater._persist_file
    updater: Any = None  # the method uses nothing of the Updater but its arguments
    persist(updater, str(target), b"v1")
    persist(updater, str(target), b"v2")
    assert target.read_bytes() == b"v2"

    def failing(_source: str, _target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        persist(updater, str(target), b"v3")
    assert target.read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timestamp.json"]
