"""What the cars fetch, served outside the API stack: fresh where it must be, cached where it may be."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update
from sqlalchemy.orm import sessionmaker
from tuf.api.metadata import Metadata, Targets, Timestamp

from ota_server.db.models import Base, RepoFile
from ota_server.errors import NotFound
from ota_server.services.repository import RepoReader
from ota_server.signing.store import IMAGE, REPO_WIDE
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, upload, verify, vin


async def _timestamp(env: Env, v: str) -> Metadata[Timestamp]:
    resp = await env.client.get(f"/repo/director/{v}/metadata/timestamp.json")
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-cache"
    return Metadata[Timestamp].from_bytes(resp.content)


async def test_a_director_chain_is_re_signed_when_served_close_to_expiry(env: Env) -> None:
    v = vin(1)
    await launched(env.client, [v])
    root = Metadata.from_bytes((await env.client.get(f"/repo/director/{v}/metadata/1.root.json")).content)
    first = await _timestamp(env, v)
    env.clock.advance(3600)  # fresh: served as signed
    assert (await _timestamp(env, v)).signed.version == first.signed.version
    env.clock.advance(12 * 3600)  # under half of the day's lifetime left: re-signed as it is served
    again = await _timestamp(env, v)
    assert again.signed.version == first.signed.version + 1
    assert again.signed.expires > first.signed.expires
    verify(root, "timestamp", again)


async def test_a_release_published_on_this_server_is_listed_at_once(env: Env) -> None:
    url = "/repo/image/metadata/targets.json"
    before = Metadata[Targets].from_bytes((await env.client.get(url)).content)  # now in memory
    release = await upload(env.client, version="1.2.0", counter=3)
    assert release.status_code == 201, release.text
    after = Metadata[Targets].from_bytes((await env.client.get(url)).content)
    assert after.signed.version > before.signed.version
    assert release.json()["target_path"] in after.signed.targets


async def test_head_unknown_names_and_paths(env: Env) -> None:
    head = await env.client.head("/repo/image/metadata/timestamp.json")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    missing = await env.client.get("/repo/image/metadata/7.snapshot.json")
    assert missing.status_code == 404 and "no image metadata" in missing.json()["detail"]
    assert (await env.client.get("/repo/image/targets/nothing/here.otab")).status_code == 404
    assert (await env.client.get(f"/repo/director/{vin(2)}/metadata/timestamp.json")).status_code == 404
    assert (await env.client.get(f"/repo/director/{vin(2)}/elsewhere/x.json")).status_code == 404
    metrics = (await env.client.get("/metrics")).text
    assert 'route="/repo/image/metadata/{name}"' in metrics


def test_another_processs_change_shows_once_the_copy_is_older_than_its_ttl(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    with sessionmaker(engine)() as session:
        session.add(RepoFile(repo=IMAGE, owner=REPO_WIDE, name="timestamp.json", version=1, data=b"v1", updated_at=now))
        session.add(RepoFile(repo=IMAGE, owner=REPO_WIDE, name="1.root.json", version=1, data=b"r1", updated_at=now))
        session.commit()
    tick = [0.0]
    reader = RepoReader(
        engine,
        sessionmaker(engine),
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        lambda: now,
        ttl_s=1.0,
        monotonic=lambda: tick[0],
    )
    assert reader.image("timestamp.json") == b"v1" and reader.image("root.json") == b"r1"
    other_process = sessionmaker(engine)  # not the reader's session factory: it hears nothing
    with other_process() as session:
        session.execute(update(RepoFile).where(RepoFile.name == "timestamp.json").values(version=2, data=b"v2"))
        session.commit()
    tick[0] = 0.9
    assert reader.image_cached("timestamp.json") == b"v1"  # within the TTL: the copy
    tick[0] = 1.0
    assert reader.image_cached("timestamp.json") is None  # too old: read again (in a thread)
    assert reader.image("timestamp.json") == b"v2"
    try:
        reader.image("snapshot.json")
    except NotFound as exc:
        assert "snapshot.json" in exc.message
    else:
        raise AssertionError("a file that is not there is a 404")


async def test_a_cars_assignment_is_queued_at_notice_and_signed_once_when_it_first_asks(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from ota_server.signing.director import PENDING
    from ota_server.signing.store import DIRECTOR

    vins = [vin(n) for n in range(1, 4)]
    await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    with env.runtime.sessions() as session:
        names = {(r.owner, r.name) for r in session.scalars(select(RepoFile).where(RepoFile.repo == DIRECTOR))}
    assert {(v, PENDING) for v in vins} <= names  # notified: queued, nothing signed yet
    assert not any(name == "timestamp.json" for _, name in names)
    reader = env.runtime.repo_reader
    with ThreadPoolExecutor(4) as pool:  # several replicas' threads asking at once sign it once
        answers = list(pool.map(lambda _: reader.director(vins[0], "timestamp.json"), range(4)))
    assert len(set(answers)) == 1
    assert Metadata[Timestamp].from_bytes(answers[0]).signed.version == 1
    targets = Metadata[Targets].from_bytes(reader.director(vins[0], "targets.json"))
    assert targets.signed.unrecognized_fields["vin"] == vins[0] and len(targets.signed.targets) == 1
    # a client asking for targets first (out of TUF's order) also gets the assignment signed
    early = Metadata[Targets].from_bytes(reader.director(vins[1], "targets.json"))
    assert early.signed.unrecognized_fields["vin"] == vins[1] and len(early.signed.targets) == 1


async def test_a_cancel_before_the_car_asked_replaces_the_queued_assignment_with_nothing(env: Env) -> None:
    v = vin(1)
    campaign = await launched(env.client, [v])
    await env.runtime.dispatcher.idle()
    cancelled = await env.client.post(f"/api/v1/campaigns/{campaign['id']}/cancel", json={"reason": "wrong fix"})
    assert cancelled.status_code == 200, cancelled.text
    targets = Metadata[Targets].from_bytes(env.runtime.repo_reader.director(v, "targets.json"))
    assert targets.signed.targets == {}  # the car is assigned nothing


@pytest.mark.services
async def test_two_replicas_asking_at_once_on_postgresql_sign_one_chain(tmp_path: Path, postgres_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ota_server.db.session import make_engine, make_session_factory
    from tests.ota_server.conftest import make_settings, running

    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        vins = [vin(n) for n in range(1, 9)]
        await launched(env.client, vins)
        await env.runtime.dispatcher.idle()
        rt = env.runtime
        engine = make_engine(postgres_url)  # the second replica: its own pool and reader
        try:
            other = RepoReader(engine, make_session_factory(engine), rt.director, rt.bundles, rt.clock)
            readers = [rt.repo_reader, other] * 4
            with ThreadPoolExecutor(8) as pool:
                for v in vins:
                    answers = set(pool.map(lambda r, v=v: r.director(v, "timestamp.json"), readers))
                    assert len(answers) == 1, v
                    assert Metadata[Timestamp].from_bytes(answers.pop()).signed.version == 1
        finally:
            engine.dispose()


@contextmanager
def refusing(url: str) -> Iterator[None]:
    """The server's PostgreSQL database refuses every connection (open ones are cut) until the block ends."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests import services

    name = make_url(url).database
    where = f"host={services.POSTGRES_HOST} port={services.POSTGRES_PORT}"
    admin = f"{where} dbname={services.POSTGRES_ADMIN_DB} user=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.mark.services
async def test_a_database_outage_answers_503_with_retry_after_then_recovers(
    tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.ota_server.conftest import make_settings, running

    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        v = vin(1)
        await launched(env.client, [v])
        await env.runtime.dispatcher.idle()
        release = await upload(env.client, version="1.2.0", counter=3)  # a target path never served yet
        target_path = release.json()["target_path"]
        urls = [
            f"/repo/director/{v}/metadata/timestamp.json",
            f"/repo/director/{v}/metadata/targets.json",
            "/repo/image/metadata/timestamp.json",
            f"/repo/image/targets/{target_path}",
        ]
        caplog.clear()
        with refusing(postgres_url):
            env.runtime.repo_reader.invalidate()  # no fresh copy of the Image repository in memory
            for url in urls:
                resp = await env.client.get(url)
                assert resp.status_code == 503, (url, resp.text)
                assert int(resp.headers["retry-after"]) >= 1
                assert "database" in resp.json()["detail"]
        repo_logs = [r for r in caplog.records if r.name == "ota_server.http.repo"]
        assert repo_logs and all(r.exc_info is None and "\n" not in r.getMessage() for r in repo_logs)
        assert all(r.levelname != "ERROR" for r in repo_logs)
        for url in urls:  # the database is back: so are the answers
            assert (await env.client.get(url)).status_code == 200, url


def test_a_database_nobody_listens_for_is_unavailable_not_a_crash() -> None:
    """No server at all behind the engine (a closed port): the reads say Unavailable, with a wait."""
    import socket

    from ota_server.errors import Unavailable

    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none?connect_timeout=2")
    now = datetime(2026, 3, 1, tzinfo=UTC)
    reader = RepoReader(engine, sessionmaker(engine), None, None, lambda: now)  # type: ignore[arg-type]
    try:
        reads: list[Callable[[], object]] = [
            lambda: reader.image("timestamp.json"),
            lambda: reader.director(vin(1), "timestamp.json"),
        ]
        for read in reads:
            with pytest.raises(Unavailable) as raised:
                read()
            assert raised.value.retry_after > 0
    finally:
        engine.dispose()
