"""`vehicle-agent tuf-client` speaks the tuf-conformance CLI protocol (init, refresh, download)."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile
from typer.testing import CliRunner

from firmware_bundles import uptane
from vehicle_agent.cli import app

NOW = datetime.now(UTC)
TARGET = "files/hello.txt"
CONTENT = b"hello, car\n"


class Repo:
    """A static TUF repository on disk, served over HTTP on a free local port."""

    def __init__(self, root_dir: Path) -> None:
        self.dir = root_dir
        self.metadata = root_dir / "metadata"
        self.targets = root_dir / "targets"
        self.metadata.mkdir(parents=True)
        self.targets.mkdir()
        self.signers = uptane.RoleSigners.generate()
        self.versions = uptane.RepoVersions()
        root = uptane.create_root(self.signers, NOW + timedelta(days=30))
        (self.metadata / "1.root.json").write_bytes(root)
        (self.dir / "trusted-root.json").write_bytes(root)

    def publish(
        self, content: bytes, *, signers: uptane.RoleSigners | None = None, more: dict[str, bytes] | None = None
    ) -> None:
        listed: dict[str, TargetFile] = {}
        for path, data in {TARGET: content, **(more or {})}.items():
            (self.targets / path).parent.mkdir(parents=True, exist_ok=True)
            (self.targets / path).write_bytes(data)
            listed[path] = TargetFile(len(data), {"sha256": hashlib.sha256(data).hexdigest()}, path)
        self.versions, files = uptane.publish_targets(
            listed, signers or self.signers, uptane.Expiry(), NOW, self.versions
        )
        for name, data in files.items():
            (self.metadata / name).write_bytes(data)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[Repo, str]]:
    repository = Repo(tmp_path / "repo")
    handler = functools.partial(_QuietHandler, directory=str(repository.dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield repository, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def run(*args: str) -> int:
    return CliRunner().invoke(app, ["tuf-client", *args]).exit_code


def client_args(tmp_path: Path, base: str) -> list[str]:
    return ["--metadata-dir", str(tmp_path / "client"), "--metadata-url", f"{base}/metadata"]


def download_args(tmp_path: Path, base: str, *names: str) -> list[str]:
    return [
        *client_args(tmp_path, base),
        *(arg for name in names or (TARGET,) for arg in ("--target-name", name)),
        "--target-base-url",
        f"{base}/targets",
        "--target-dir",
        str(tmp_path / "downloads"),
        "download",
    ]


def test_init_refresh_download(repo: tuple[Repo, str], tmp_path: Path) -> None:
    repository, base = repo
    repository.publish(CONTENT)
    assert run("--metadata-dir", str(tmp_path / "client"), "init", str(repository.dir / "trusted-root.json")) == 0
    assert run(*client_args(tmp_path, base), "refresh") == 0
    # non-versioned names in the metadata dir, as the protocol asks
    assert {p.name for p in (tmp_path / "client").iterdir()} >= {"root.json", "timestamp.json", "targets.json"}
    assert run(*download_args(tmp_path, base)) == 0
    (stored,) = (tmp_path / "downloads").iterdir()
    assert stored.read_bytes() == CONTENT
    # cached: a second download with the same hashes succeeds even if the server lost the file
    (repository.targets / TARGET).unlink()
    assert run(*download_args(tmp_path, base)) == 0


def test_tampered_target_fails_download(repo: tuple[Repo, str], tmp_path: Path) -> None:
    repository, base = repo
    repository.publish(CONTENT)
    (repository.targets / TARGET).write_bytes(b"HELLO, car\n")  # same length, other bytes
    run("--metadata-dir", str(tmp_path / "client"), "init", str(repository.dir / "trusted-root.json"))
    assert run(*download_args(tmp_path, base)) == 1
    assert not any((tmp_path / "downloads").iterdir())


def test_metadata_signed_with_another_key_fails_refresh(repo: tuple[Repo, str], tmp_path: Path) -> None:
    repository, base = repo
    repository.publish(CONTENT, signers=uptane.RoleSigners.generate())
    run("--metadata-dir", str(tmp_path / "client"), "init", str(repository.dir / "trusted-root.json"))
    assert run(*client_args(tmp_path, base), "refresh") == 1


def test_refresh_needs_init_and_rollback_is_refused(repo: tuple[Repo, str], tmp_path: Path) -> None:
    repository, base = repo
    assert run(*client_args(tmp_path, base), "refresh") == 1  # nothing trusted yet
    repository.publish(CONTENT)
    old = {name: (repository.metadata / name).read_bytes() for name in ("timestamp.json", "snapshot.json")}
    repository.publish(b"newer\n")
    run("--metadata-dir", str(tmp_path / "client"), "init", str(repository.dir / "trusted-root.json"))
    assert run(*client_args(tmp_path, base), "refresh") == 0
    for name, data in old.items():  # a freeze/rollback attack replays the older versions
        (repository.metadata / name).write_bytes(data)
    assert run(*client_args(tmp_path, base), "refresh") == 1


def test_every_target_name_is_downloaded_in_order(repo: tuple[Repo, str], tmp_path: Path) -> None:
    repository, base = repo
    repository.publish(CONTENT, more={"files/second.txt": b"second\n", "third.bin": b"\x00third"})
    run("--metadata-dir", str(tmp_path / "client"), "init", str(repository.dir / "trusted-root.json"))
    assert run(*download_args(tmp_path, base, TARGET, "files/second.txt", "third.bin")) == 0
    stored = {p.name: p.read_bytes() for p in (tmp_path / "downloads").iterdir()}
    assert stored == {"files%2Fhello.txt": CONTENT, "files%2Fsecond.txt": b"second\n", "third.bin": b"\x00third"}


def test_an_unknown_first_target_fails_even_when_the_last_is_known(repo: tuple[Repo, str], tmp_path: Path) -> None:
    repository, base = repo
    repository.publish(CONTENT)
    run("--metadata-dir", str(tmp_path / "client"), "init", str(repository.dir / "trusted-root.json"))
    assert run(*download_args(tmp_path, base, "files/missing.txt", TARGET)) == 1
