"""Notices that carry the car's signed Director files (issue #19, ``OTA_NOTICE_CARRIES_METADATA``).

The chain is signed in the tick that notifies the car and stored as the first timestamp
request would have stored it: the notice carries exactly those bytes, a later HTTP fetch
gets the same ones, and the car's own verification needs no Director chain request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from tuf.api.metadata import TargetFile

from firmware_bundles import topics
from firmware_bundles.messages import MAX_MESSAGE_BYTES, encode, parse_notice
from ota_server.db.models import NoticeLog, RepoFile
from ota_server.services.campaign_fleet import carried
from ota_server.signing.director import PENDING
from ota_server.signing.store import DIRECTOR
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import launched, vin
from tests.ota_server.test_director_reads import ReaderTransport, _car
from vehicle_agent.verifier import Verifier

NAMES = ("timestamp", "snapshot", "targets")


def _rows(env: Env, v: str) -> dict[str, tuple[int, bytes]]:
    with env.runtime.sessions() as session:
        rows = session.execute(
            select(RepoFile.name, RepoFile.version, RepoFile.data).where(RepoFile.repo == DIRECTOR, RepoFile.owner == v)
        ).all()
    return {name: (version, bytes(data)) for name, version, data in rows}


async def test_the_notice_carries_the_stored_chain_and_the_car_needs_no_director_request(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "server", notice_carries_metadata=True)) as env:
        env.clock.now = datetime.now(UTC)  # the agent checks expiry against the real time
        v = vin(1)
        await launched(env.client, [v])
        await env.runtime.dispatcher.idle()
        (published,) = env.publisher.on(topics.campaign_topic(v))
        assert len(published.payload) <= MAX_MESSAGE_BYTES
        carried = parse_notice(published.payload).director_metadata
        assert carried is not None

        rows = _rows(env, v)
        assert PENDING not in rows  # signed at notice time, stored like the request path stores it
        for name in NAMES:
            assert getattr(carried, name).encode() == rows[f"{name}.json"][1]
        reader = env.runtime.repo_reader
        assert reader.director(v, "timestamp.json") == carried.timestamp.encode()  # the same bytes over HTTP
        assert rows["timestamp.json"][0] == 1

        transport = ReaderTransport(reader)
        verified = Verifier(_car(env, v, tmp_path / "car"), transport).verify(carried)
        assert [a.ecu_serial for a in verified.assignments] == [f"S-{v[-6:]}"]
        director = [p.rpartition("/")[2] for p in transport.requests if p.startswith("director/")]
        assert director == ["2.root.json"]  # only the root probe

        with env.runtime.sessions() as session:
            (payload,) = session.scalars(select(NoticeLog.payload).where(NoticeLog.vin == v)).all()
        assert "director_metadata" not in payload  # the log keeps the notice; the chain is in its rows


async def test_by_default_notices_carry_nothing_and_the_chain_is_signed_when_asked(env: Env) -> None:
    v = vin(2)
    await launched(env.client, [v])
    await env.runtime.dispatcher.idle()
    (published,) = env.publisher.on(topics.campaign_topic(v))
    assert b"director_metadata" not in published.payload  # what every agent, old ones too, parses
    assert set(_rows(env, v)) == {PENDING}


async def test_a_notice_too_big_with_its_chain_goes_without(tmp_path: Path) -> None:
    """Four ECUs fit with room to spare (the size is measured here); forty do not, and the car fetches."""
    async with running(make_settings(tmp_path, notice_carries_metadata=True)) as env:
        v = vin(3)
        await launched(env.client, [v])
        await env.runtime.dispatcher.idle()
        (published,) = env.publisher.on(topics.campaign_topic(v))
        notice = parse_notice(published.payload).model_copy(update={"director_metadata": None})
        director = env.runtime.director
        with env.runtime.sessions() as session:
            (image,) = director.assigned(session, v)[0].values()

        def chain_for(ecus: int) -> dict[str, tuple[int, bytes]]:
            images = {f"ECU-{n:04d}": TargetFile.from_dict(image.to_dict(), f"{image.path}.{n}") for n in range(ecus)}
            plan = {v: images}  # one bundle per ECU (the Director names a bundle once)
            with env.runtime.sessions() as session:
                director.queue(session, plan, env.clock(), min_release_counter=2)
                chain = director.sign_queued(session, [v], env.clock())[v]
                session.rollback()
            return chain

        four = carried(notice, chain_for(4))
        assert four.director_metadata is not None
        assert 3_000 < len(encode(four)) < MAX_MESSAGE_BYTES // 2
        forty = carried(notice, chain_for(40))
        assert forty.director_metadata is None
        assert forty == notice


async def test_an_assignment_queued_earlier_is_replaced_by_the_carried_chain_never_signed_after_it(
    tmp_path: Path,
) -> None:
    """The notifying tick signs straight from its plan: a row still queued for the car (an earlier
    assignment no car asked for) is deleted with it, so the car's first fetch cannot sign that
    older assignment over the one its notice carries."""
    async with running(make_settings(tmp_path, notice_carries_metadata=True)) as env:
        v = vin(4)
        director = env.runtime.director
        stale = TargetFile.from_dict({"length": 1, "hashes": {"sha256": "0" * 64}}, "bundles/OLD/0.9.0.otab")
        with env.runtime.sessions() as session:
            director.queue(session, {v: {f"S-{v[-6:]}": stale}}, env.clock(), min_release_counter=1)
            session.commit()
        await launched(env.client, [v])
        await env.runtime.dispatcher.idle()
        (published,) = env.publisher.on(topics.campaign_topic(v))
        carried = parse_notice(published.payload).director_metadata
        assert carried is not None
        rows = _rows(env, v)
        assert PENDING not in rows
        assert rows["targets.json"][1] == carried.targets.encode()
        with env.runtime.sessions() as session:
            assert director.sign_queued(session, [v], env.clock()) == {}  # nothing left to sign over it
            images, _consent = director.assigned(session, v)
        assert [image.path for image in images.values()] != [stale.path]
