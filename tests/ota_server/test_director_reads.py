"""The Director's read path: versioned names, one query per timestamp, batched lazy signing.

The Director's root asks for consistent snapshots, so a car (python-tuf's ngclient) fetches
``timestamp.json`` and then ``N.snapshot.json`` and ``M.targets.json``; the server answers
those two from memory, and signs the queued assignments of cars asking at once together.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from firmware_bundles import repo_paths
from ota_server.errors import NotFound
from ota_server.services.repository import RepoReader, SignBatcher
from ota_server.signing.chains import Chain
from ota_server.signing.director import Director
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import HW, launched, verify, vin
from vehicle_agent.config import AgentConfig, EcuConfig
from vehicle_agent.errors import FetchError
from vehicle_agent.transport import Chunks
from vehicle_agent.verifier import Verifier

REPO = "http://ota.test/repo"


@dataclass
class Statements:
    """SQL statements and commits on an engine, by thread name."""

    sql: list[tuple[str, str]] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)

    def by(self, prefix: str) -> list[str]:
        return [s for thread, s in self.sql if thread.startswith(prefix)]


@contextmanager
def counting(engine: Engine) -> Iterator[Statements]:
    seen = Statements()

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        seen.sql.append((threading.current_thread().name, sql))

    def commit(_conn: Any) -> None:
        seen.commits.append(threading.current_thread().name)

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)


class ReaderTransport:
    """The agent's transport straight onto a :class:`RepoReader` (no HTTP), recording the names asked."""

    def __init__(self, reader: RepoReader) -> None:
        self.reader = reader
        self.requests: list[str] = []

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        path = url.removeprefix(REPO + "/")
        self.requests.append(path)
        try:
            if path.startswith(repo_paths.IMAGE_METADATA):
                body = self.reader.image(path.removeprefix(repo_paths.IMAGE_METADATA))
            else:
                vin_, _, name = path.removeprefix("director/").partition("/metadata/")
                body = self.reader.director(vin_, name)
        except NotFound as exc:
            raise FetchError(url, "HTTP 404", 404) from exc
        yield Chunks(iter([body[start:]]), start)


def _wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def _car(env: Env, v: str, state_dir: Path) -> AgentConfig:
    rt = env.runtime
    return AgentConfig(
        vin=v,
        ecus=(EcuConfig(f"S-{v[-6:]}", HW, "1.0.0"),),
        mqtt_url="mqtt://unused",
        repo_url=REPO,
        state_dir=state_dir,
        image_root=rt.image_root,
        director_root=rt.director_root,
    )


async def test_the_agent_fetches_and_verifies_the_chain_by_version(env: Env, tmp_path: Path) -> None:
    env.clock.now = datetime.now(UTC)  # the agent checks expiry against the real time
    v = vin(1)
    await launched(env.client, [v])
    await env.runtime.dispatcher.idle()
    assert Metadata[Root].from_bytes(env.runtime.director_root).signed.consistent_snapshot
    transport = ReaderTransport(env.runtime.repo_reader)
    verified = Verifier(_car(env, v, tmp_path), transport).verify()  # the agent's own verification
    assert [a.ecu_serial for a in verified.assignments] == [f"S-{v[-6:]}"]
    director = [p.rpartition("/")[2] for p in transport.requests if p.startswith("director/")]
    assert director == ["2.root.json", "timestamp.json", "1.snapshot.json", "1.targets.json"]


async def test_versioned_names_are_served_and_a_version_the_vin_lacks_is_a_404(env: Env) -> None:
    v = vin(1)
    await launched(env.client, [v])
    base = f"/repo/director/{v}/metadata/"
    timestamp = Metadata[Timestamp].from_bytes((await env.client.get(base + "timestamp.json")).content)
    n = timestamp.signed.snapshot_meta.version
    snapshot = await env.client.get(f"{base}{n}.snapshot.json")
    assert snapshot.status_code == 200 and snapshot.content == (await env.client.get(base + "snapshot.json")).content
    m = Metadata[Snapshot].from_bytes(snapshot.content).signed.meta["targets.json"].version
    targets = await env.client.get(f"{base}{m}.targets.json")
    assert targets.status_code == 200 and targets.content == (await env.client.get(base + "targets.json")).content
    for wrong in (f"{n + 1}.snapshot.json", f"{m + 1}.targets.json", "0.snapshot.json", "1.timestamp.json"):
        assert (await env.client.get(base + wrong)).status_code == 404, wrong
    fresh = RepoReader(env.runtime.engine, env.runtime.sessions, env.runtime.director, env.runtime.bundles, env.clock)
    assert fresh.director(v, f"{m}.targets.json") == targets.content  # another replica: read from the database
    with pytest.raises(NotFound):
        fresh.director(v, f"{n + 1}.snapshot.json")
    assert (await env.client.get(f"/repo/director/{vin(9)}/metadata/1.snapshot.json")).status_code == 404


async def test_after_the_timestamp_snapshot_and_targets_need_no_query(env: Env) -> None:
    v = vin(1)
    await launched(env.client, [v])
    await env.runtime.dispatcher.idle()
    reader, engine = env.runtime.repo_reader, env.runtime.engine

    def fetch() -> tuple[list[str], Metadata[Timestamp], Metadata[Snapshot], Metadata[Targets]]:
        with counting(engine) as seen:
            ts = Metadata[Timestamp].from_bytes(reader.director(v, "timestamp.json"))
            asked = [sql for _, sql in seen.sql]
            snap = Metadata[Snapshot].from_bytes(reader.director(v, f"{ts.signed.snapshot_meta.version}.snapshot.json"))
            targets_version = snap.signed.meta["targets.json"].version
            targets = Metadata[Targets].from_bytes(reader.director(v, f"{targets_version}.targets.json"))
        assert len(seen.sql) == len(asked), seen.sql[len(asked) :]  # no database access after the timestamp
        return asked, ts, snap, targets

    assert reader.director_cached(v, "1.snapshot.json") is None  # nothing served yet
    signing, first, _, _ = fetch()  # signs the queued assignment and serves the bytes it wrote
    # what the HTTP layer answers on the event loop, without a thread: only versioned names it holds
    snapshot_name = f"{first.signed.snapshot_meta.version}.snapshot.json"
    assert reader.director_cached(v, snapshot_name) == reader.director(v, snapshot_name)
    assert reader.director_cached(v, "snapshot.json") is None
    assert reader.director_cached(v, "999.targets.json") is None
    assert signing[-1].startswith("DELETE"), signing  # the queued row: nothing is read back after
    served, again, _, _ = fetch()  # the chain as signed: the timestamp is one query
    assert len(served) == 1 and again.signed.version == first.signed.version
    env.clock.advance(13 * 3600)  # under half the timestamp's day left: re-signed as it is served
    _, resigned, snap, targets = fetch()
    assert resigned.signed.version == first.signed.version + 1
    root = Metadata[Root].from_bytes(env.runtime.director_root)
    for role, md in (("timestamp", resigned), ("snapshot", snap), ("targets", targets)):
        verify(root, role, md)


async def test_the_probe_for_a_rotated_root_asks_nothing_about_the_car(env: Env) -> None:
    """Each car's refresh asks for ``N+1.root.json``; while no such root exists the answer is a 404
    for every VIN, so it is given without the query for the VIN's chain (and from memory on the event
    loop once the repo-wide copy is fresh). A root that exists is still served only to a VIN with a chain."""
    v = vin(1)
    await launched(env.client, [v])
    await env.runtime.dispatcher.idle()
    rt = env.runtime
    reader = RepoReader(rt.engine, rt.sessions, rt.director, rt.bundles, env.clock, ttl_s=3600)
    with counting(rt.engine) as seen, pytest.raises(NotFound):
        reader.director(v, "2.root.json")
    assert len(seen.sql) == 1 and "repo_files" in seen.sql[0][1], seen.sql  # the repo-wide copy only
    with counting(rt.engine) as seen:
        for car in (v, vin(9)):
            with pytest.raises(NotFound):
                reader.director_cached(car, "2.root.json")
            with pytest.raises(NotFound):
                reader.director(car, "2.root.json")
    assert seen.sql == []
    assert reader.director(v, "1.root.json") == reader.director(v, "root.json") == rt.director_root
    for asked in ("1.root.json", "root.json"):
        with pytest.raises(NotFound):
            reader.director(vin(9), asked)  # never assigned anything
        assert reader.director_cached(v, asked) is None  # served through the reader, as before
    assert (await env.client.get(f"/repo/director/{v}/metadata/2.root.json")).status_code == 404
    assert (await env.client.get(f"/repo/director/{v}/metadata/1.root.json")).content == rt.director_root


@pytest.fixture
def gated(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[Sequence[str]], threading.Event]]:
    """The runtime Director's batch signing, recorded; its first call waits for the event."""
    director = env.runtime.director
    calls: list[Sequence[str]] = []
    gate = threading.Event()
    original = director.sign_queued

    def sign_queued(session: Session, vins: Sequence[str], now: datetime) -> dict[str, Chain]:
        calls.append(list(vins))
        if len(calls) == 1:
            assert gate.wait(30)
        return original(session, vins, now)

    monkeypatch.setattr(director, "sign_queued", sign_queued)
    yield calls, gate
    gate.set()


async def test_cars_asking_at_once_are_signed_together_in_one_transaction(
    env: Env, tmp_path: Path, gated: tuple[list[Sequence[str]], threading.Event]
) -> None:
    calls, gate = gated
    env.clock.now = datetime.now(UTC)  # the agent checks expiry against the real time
    vins = [vin(n) for n in range(1, 21)]
    await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    reader = env.runtime.repo_reader
    with counting(env.runtime.engine) as seen, ThreadPoolExecutor(20, thread_name_prefix="car") as pool:
        answers = [pool.submit(reader.director, v, "timestamp.json") for v in vins]
        _wait_until(lambda: reader.signing_asked() == 20)  # one signs, 19 wait behind it
        gate.set()
        timestamps = {v: Metadata[Timestamp].from_bytes(a.result(30)) for v, a in zip(vins, answers, strict=True)}
    assert sorted(len(c) for c in calls) == [1, 19]
    assert len([t for t in seen.commits if t.startswith("car")]) == 2  # one transaction per batch
    batch_sql = seen.by("car")
    assert len(batch_sql) <= 20 + 2 * 6, batch_sql  # a query per car asking, a few per batch (not per car)
    assert {ts.signed.version for ts in timestamps.values()} == {1}
    for n, v in enumerate(vins):  # every chain verifies as the agent verifies it
        verified = Verifier(_car(env, v, tmp_path / str(n)), ReaderTransport(reader)).verify()
        assert [a.ecu_serial for a in verified.assignments] == [f"S-{v[-6:]}"]


async def test_a_deadlock_is_retried(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    v = vin(1)
    await launched(env.client, [v])
    await env.runtime.dispatcher.idle()
    director = env.runtime.director
    original, calls = director.sign_queued, []

    class Deadlock(Exception):
        sqlstate = "40P01"

    def sign_queued(session: Session, vins: Sequence[str], now: datetime) -> dict[str, Chain]:
        calls.append(vins)
        if len(calls) == 1:
            raise OperationalError("SELECT ... FOR UPDATE", {}, Deadlock("deadlock detected"))
        return original(session, vins, now)

    monkeypatch.setattr(director, "sign_queued", sign_queued)
    timestamp = Metadata[Timestamp].from_bytes(env.runtime.repo_reader.director(v, "timestamp.json"))
    assert timestamp.signed.version == 1 and len(calls) == 2


def test_the_batcher_signs_a_vin_once_caps_a_batch_and_hands_every_waiter_an_error() -> None:
    started, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def sign(vins: list[str]) -> dict[str, Chain]:
        batches.append(vins)
        if len(batches) == 1:
            started.set()
            assert release.wait(30)
        if "BAD" in vins:
            raise RuntimeError("database gone")
        return {v: {"timestamp.json": (1, v.encode())} for v in vins if v != "NONE"}

    batcher = SignBatcher(sign, max_batch=3)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.sign, "A")
        assert started.wait(30)
        later = [pool.submit(batcher.sign, v) for v in ("B", "B", "C", "NONE", "D")]
        _wait_until(lambda: batcher.asking() == 6)
        release.set()
        answers = [f.result(30) for f in (first, *later)]
    assert batches[0] == ["A"] and sorted(len(b) for b in batches[1:]) == [1, 3]  # B once; at most 3 at a time
    assert sorted(v for b in batches for v in b) == ["A", "B", "C", "D", "NONE"]
    assert [a and a["timestamp.json"][1] for a in answers] == [b"A", b"B", b"B", b"C", None, b"D"]
    failing = SignBatcher(sign)
    with pytest.raises(RuntimeError, match="database gone"):
        failing.sign("BAD")


# -- two replicas on one PostgreSQL ---------------------------------------------------------


@pytest.mark.services
async def test_two_replicas_signing_batches_at_once_agree_on_every_chain(tmp_path: Path, postgres_url: str) -> None:
    from ota_server.db.session import make_engine, make_session_factory
    from tests.ota_server.conftest import make_settings, running

    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        vins = [vin(n) for n in range(1, 41)]
        await launched(env.client, vins)
        await env.runtime.dispatcher.idle()
        rt = env.runtime
        engine = make_engine(postgres_url)  # the second replica: its own pool, reader and Director
        try:
            other = RepoReader(
                engine,
                make_session_factory(engine),
                Director(rt.director.keys, rt.director.expiry),
                rt.bundles,
                rt.clock,
            )
            # both replicas meet every VIN at once, and again in the opposite order, from 16 threads
            streams = [(rt.repo_reader, vins), (other, vins), (rt.repo_reader, vins[::-1]), (other, vins[::-1])]
            with ThreadPoolExecutor(16) as pool:
                asked = [
                    (order[i], reader, pool.submit(reader.director, order[i], "timestamp.json"))
                    for i in range(len(vins))
                    for reader, order in streams
                ]
                served: dict[str, set[bytes]] = {}
                for v, _reader, future in asked:
                    served.setdefault(v, set()).add(future.result(60))
            assert all(len(answers) == 1 for answers in served.values())  # one chain per VIN, whoever signed it
            ours = [served[v].pop() for v in vins]
            root = Metadata[Root].from_bytes(rt.director_root)
            for v, data in zip(vins, ours, strict=True):
                ts = Metadata[Timestamp].from_bytes(data)
                assert ts.signed.version == 1
                verify(root, "timestamp", ts)
                name = f"{ts.signed.snapshot_meta.version}.snapshot.json"
                assert other.director(v, name) == rt.repo_reader.director(v, name)
        finally:
            engine.dispose()


@pytest.mark.services
async def test_a_vin_another_replica_signed_first_is_served_that_replicas_chain(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ota_server.db.session import make_engine, make_session_factory
    from tests.ota_server.conftest import make_settings, running

    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        vins = [vin(n) for n in range(1, 4)]
        await launched(env.client, vins)
        await env.runtime.dispatcher.idle()
        rt = env.runtime
        engine = make_engine(postgres_url)
        try:
            late = Director(rt.director.keys, rt.director.expiry)
            original = late.sign_queued

            def sign_queued(session: Session, batch: Sequence[str], now: datetime) -> dict[str, Chain]:
                for v in batch:  # the first replica signs these VINs between our read and our lock
                    rt.repo_reader.director(v, "timestamp.json")
                return original(session, batch, now)

            monkeypatch.setattr(late, "sign_queued", sign_queued)
            other = RepoReader(engine, make_session_factory(engine), late, rt.bundles, rt.clock)
            for v in vins:
                served = other.director(v, "timestamp.json")
                assert served == rt.repo_reader.director(v, "timestamp.json")
                assert Metadata[Timestamp].from_bytes(served).signed.version == 1
                snapshot_version = json.loads(served)["signed"]["meta"]["snapshot.json"]["version"]
                assert other.director(v, f"{snapshot_version}.snapshot.json")  # read back, then from memory
        finally:
            engine.dispose()
