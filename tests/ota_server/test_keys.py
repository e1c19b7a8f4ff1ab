"""``ota keys``: the 2-of-3 root, rotation, revocation, and re-signing before expiry.

Key work runs on a real (SQLite) database the way the CLI does; what a car makes of
the result is checked with python-tuf's ``Updater`` over the agent's own fetcher,
starting from the root version 1 a car is provisioned with.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root, Snapshot, Timestamp
from tuf.ngclient import Updater
from typer.testing import CliRunner

from firmware_bundles import repo_paths
from firmware_bundles.uptane import Expiry, sign_metadata
from ota_server.cli.main import app as cli
from ota_server.db.migrate import upgrade
from ota_server.db.models import RepoFile
from ota_server.db.session import make_engine, make_session_factory
from ota_server.errors import InvalidInput, NotFound
from ota_server.signing import keyadmin
from ota_server.signing.keyadmin import KeyDirs
from ota_server.signing.keys import load_key
from ota_server.signing.store import IMAGE, REPO_WIDE, latest_root
from vehicle_agent.transport import MemoryTransport, TufFetcher

REPO = "http://ota.test/repo"
NOW = datetime.now(UTC).replace(microsecond=0)  # cars check expiry against the real clock
EXPIRY = Expiry()


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def dirs(tmp_path: Path) -> KeyDirs:
    return KeyDirs(tmp_path / "offline", tmp_path / "keys")


def run(sessions: sessionmaker[Session], work: str, dirs: KeyDirs, *args: str) -> keyadmin.KeyChange:
    with sessions() as session:
        change: keyadmin.KeyChange = getattr(keyadmin, work)(session, dirs, *args, EXPIRY, NOW)
        session.commit()
    keyadmin.retire(change)
    return change


def image_root(sessions: sessionmaker[Session]) -> Metadata[Root]:
    with sessions() as session:
        row = latest_root(session, IMAGE)
        assert row is not None
        return Metadata[Root].from_bytes(row.data)


def served(sessions: sessionmaker[Session]) -> MemoryTransport:
    """The Image repository's stored files, at the URLs a car fetches them from."""
    transport = MemoryTransport()
    with sessions() as session:
        for row in session.scalars(select(RepoFile).where(RepoFile.repo == IMAGE, RepoFile.owner == REPO_WIDE)):
            transport.files[repo_paths.image_metadata_url(REPO) + row.name] = row.data
    return transport


def first_root(sessions: sessionmaker[Session]) -> bytes:
    with sessions() as session:
        row = session.get(RepoFile, (IMAGE, REPO_WIDE, "1.root.json"))
        assert row is not None
        return row.data


def car_refresh(tmp_path: Path, transport: MemoryTransport, root_v1: bytes, name: str = "car") -> Updater:
    """A car that was provisioned with root v1 refreshes (python-tuf, the agent's fetcher)."""
    directory = tmp_path / name
    directory.mkdir()
    updater = Updater(
        str(directory), repo_paths.image_metadata_url(REPO), fetcher=TufFetcher(transport), bootstrap=root_v1
    )
    updater.refresh()
    return updater


def trusted_root_version(tmp_path: Path, name: str = "car") -> int:
    return Metadata[Root].from_file(str(tmp_path / name / "root.json")).signed.version


def root_key_path(dirs: KeyDirs, keyid: str) -> Path:
    found = [*dirs.offline.glob(f"*{keyid[:16]}.pem"), *(dirs.offline / "retired").glob(f"*{keyid[:16]}.pem")]
    assert found, keyid
    return found[0]


def test_init_cli_makes_offline_root_2_of_3_and_online_keys(tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    created = CliRunner().invoke(
        cli, ["db", "upgrade", "--create", "--data-dir", str(tmp_path)], env={"OTA_DATABASE_URL": ""}
    )
    assert created.exit_code == 0, created.output  # keys go into an existing database only
    result = CliRunner().invoke(
        cli,
        ["keys", "init", "--offline-dir", str(offline), "--data-dir", str(tmp_path), "--passphrase-env", "KEYPASS"],
        env={"KEYPASS": "correct horse", "OTA_DATABASE_URL": ""},
    )
    assert result.exit_code == 0, result.output
    assert "image root is now v1" in result.output
    engine = make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    root = image_root(make_session_factory(engine))
    engine.dispose()
    roles = root.signed.roles
    assert (len(roles["root"].keyids), roles["root"].threshold) == (3, 2)
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    # Root and targets keys are offline, encrypted; the server holds only snapshot and timestamp.
    assert len(list(offline.glob("root*.pem"))) == 3 and len(list(offline.glob("targets*.pem"))) == 1
    assert all(b"ENCRYPTED" in p.read_bytes() for p in offline.glob("*.pem"))
    server_keys = sorted(p.name.split("-")[0] for p in (tmp_path / "keys" / "image").glob("*.pem"))
    assert server_keys == ["snapshot", "timestamp"]
    assert len(list((tmp_path / "keys" / "director").glob("online-*.pem"))) == 1
    # One of the three root signatures alone does not meet the threshold.
    one = dict(list(root.signatures.items())[:1])
    with pytest.raises(tuf_exceptions.UnsignedMetadataError):
        root.signed.verify_delegate("root", root.signed_bytes, one)
    # And it refuses to run twice.
    again = CliRunner().invoke(cli, ["keys", "init", "--offline-dir", str(offline), "--data-dir", str(tmp_path)])
    assert again.exit_code == 1 and "already has a root" in again.output


def test_init_then_a_car_refreshes_from_root_v1(tmp_path: Path, sessions: sessionmaker[Session], dirs: KeyDirs) -> None:
    run(sessions, "init", dirs)
    updater = car_refresh(tmp_path, served(sessions), first_root(sessions))
    assert updater.get_targetinfo("bundles/none.otab") is None  # refreshed: a complete, empty chain


def test_root_signed_by_only_one_of_three_keys_is_rejected_by_the_car(
    tmp_path: Path, sessions: sessionmaker[Session], dirs: KeyDirs
) -> None:
    run(sessions, "init", dirs)
    current = image_root(sessions)
    new = Metadata[Root].from_bytes(current.to_bytes())
    new.signed.version = 2
    new.signatures.clear()
    one_key = load_key(root_key_path(dirs, current.signed.roles["root"].keyids[0]))
    transport = served(sessions)
    transport.files[repo_paths.image_metadata_url(REPO) + "2.root.json"] = sign_metadata(new, [one_key])
    with pytest.raises(tuf_exceptions.UnsignedMetadataError):
        car_refresh(tmp_path, transport, first_root(sessions))


def test_rotation_chain_v1_to_v3_is_followed_by_a_car_holding_only_v1(
    tmp_path: Path, sessions: sessionmaker[Session], dirs: KeyDirs
) -> None:
    run(sessions, "init", dirs)
    v1 = image_root(sessions).signed
    assert run(sessions, "rotate", dirs, "root").roots == {IMAGE: 2}
    change = run(sessions, "rotate", dirs, "targets")
    assert change.roots == {IMAGE: 3} and change.resigned == ["snapshot.json", "targets.json", "timestamp.json"]
    run(sessions, "rotate", dirs, "timestamp")
    v4 = image_root(sessions).signed
    assert v4.version == 4
    assert not set(v4.roles["root"].keyids) & set(v1.roles["root"].keyids)
    assert v4.roles["targets"].keyids != v1.roles["targets"].keyids
    # Replaced keys are moved aside, never left where a keyring would pick them up.
    assert len(list(dirs.offline.glob("root*.pem"))) == 3
    assert len(list((dirs.offline / "retired").glob("root*.pem"))) == 3
    car_refresh(tmp_path, served(sessions), first_root(sessions))
    assert trusted_root_version(tmp_path) == 4


def test_rotating_the_director_key_re_signs_every_chain(sessions: sessionmaker[Session], dirs: KeyDirs) -> None:
    run(sessions, "init", dirs)
    change = run(sessions, "rotate", dirs, "director")
    assert change.roots == {"director": 2}
    assert change.resigned == ["the Director chains of 0 vehicle(s)"]
    assert len(list(dirs.director.glob("online*.pem"))) == 1
    assert len(list((dirs.director / "retired").glob("online*.pem"))) == 1


def test_a_revoked_keys_signature_is_no_longer_accepted(
    tmp_path: Path, sessions: sessionmaker[Session], dirs: KeyDirs
) -> None:
    run(sessions, "init", dirs)
    k1, k2, k3 = image_root(sessions).signed.roles["root"].keyids
    assert run(sessions, "revoke", dirs, k3).roots == {IMAGE: 2}
    v2 = image_root(sessions)
    assert v2.signed.roles["root"].keyids == [k1, k2]
    assert k3 not in v2.signatures  # the revoked key does not sign its own removal
    car_refresh(tmp_path, served(sessions), first_root(sessions), "honest")
    # Someone holding the revoked key and one trusted key signs a v3: not enough under v2.
    forged = Metadata[Root].from_bytes(v2.to_bytes())
    forged.signed.version = 3
    forged.signatures.clear()
    transport = served(sessions)
    transport.files[repo_paths.image_metadata_url(REPO) + "3.root.json"] = sign_metadata(
        forged, [load_key(root_key_path(dirs, k1)), load_key(root_key_path(dirs, k3))]
    )
    with pytest.raises(tuf_exceptions.UnsignedMetadataError):
        car_refresh(tmp_path, transport, first_root(sessions), "attacked")


def test_revoke_below_threshold_is_refused_and_changes_nothing(sessions: sessionmaker[Session], dirs: KeyDirs) -> None:
    run(sessions, "init", dirs)
    root = image_root(sessions).signed
    _k1, k2, k3 = root.roles["root"].keyids
    run(sessions, "revoke", dirs, k3)
    with pytest.raises(InvalidInput, match=r"root role with 1 key\(s\), below its threshold 2"):
        run(sessions, "revoke", dirs, k2)
    with pytest.raises(InvalidInput, match="targets role with 0 key"):
        run(sessions, "revoke", dirs, root.roles["targets"].keyids[0])
    with pytest.raises(NotFound, match="trusts key"):
        run(sessions, "revoke", dirs, "ab" * 32)
    assert image_root(sessions).signed.version == 2


def _versions(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        rows = session.scalars(select(RepoFile).where(RepoFile.repo == IMAGE, RepoFile.owner == REPO_WIDE))
        return {row.name: row.version for row in rows}


def _expires(sessions: sessionmaker[Session], name: str) -> datetime:
    with sessions() as session:
        row = session.get(RepoFile, (IMAGE, REPO_WIDE, name))
        assert row is not None
        signed = Metadata.from_bytes(row.data).signed
        assert isinstance(signed, Timestamp if name == "timestamp.json" else Snapshot)
        return signed.expires


def test_timestamp_and_snapshot_are_re_signed_before_they_lapse(sessions: sessionmaker[Session], dirs: KeyDirs) -> None:
    from ota_server.signing.freshness import Refresher
    from ota_server.signing.image_repo import ImageRepository
    from ota_server.signing.keys import Keyring, RepoKeys

    run(sessions, "init", dirs)
    now = NOW
    repo = ImageRepository(RepoKeys(IMAGE, Keyring([dirs.image])), EXPIRY)
    refresher = Refresher(sessions, repo, lambda: now)
    before = _versions(sessions)
    assert refresher.run_once() == [] and _versions(sessions) == before  # fresh: nothing re-signed

    now = NOW + timedelta(hours=13)  # timestamp (1 day) has less than half its life left
    assert refresher.run_once() == ["timestamp.json"]
    assert _versions(sessions)["timestamp.json"] == before["timestamp.json"] + 1
    assert _expires(sessions, "timestamp.json") == now + EXPIRY.timestamp
    assert refresher.run_once() == []  # and not again while fresh

    now = NOW + timedelta(days=4)  # snapshot (7 days) is due too: both, never targets (offline)
    assert refresher.run_once() == ["snapshot.json", "timestamp.json"]
    after = _versions(sessions)
    assert after["targets.json"] == before["targets.json"]
    assert after["snapshot.json"] == before["snapshot.json"] + 1
    assert _expires(sessions, "snapshot.json") == now + EXPIRY.snapshot


async def test_the_periodic_job_runs_on_the_injected_sleep(sessions: sessionmaker[Session], dirs: KeyDirs) -> None:
    from ota_server.signing.freshness import Refresher
    from ota_server.signing.image_repo import ImageRepository
    from ota_server.signing.keys import Keyring, RepoKeys

    run(sessions, "init", dirs)
    clock = [NOW]
    waits: list[float] = []

    class Stop(Exception):
        pass

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise Stop
        clock[0] += timedelta(hours=8)

    repo = ImageRepository(RepoKeys(IMAGE, Keyring([dirs.image])), EXPIRY)
    refresher = Refresher(sessions, repo, lambda: clock[0], sleep)
    with pytest.raises(Stop):
        await refresher.run(3600)
    assert waits == [3600, 3600, 3600] and refresher.runs == 3
    # checks at +0h (fresh), +8h (fresh), +16h (due): one re-signing
    assert _versions(sessions)["timestamp.json"] == 2
