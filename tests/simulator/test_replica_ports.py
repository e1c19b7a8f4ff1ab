"""A replica's first start takes another port when the one chosen was taken before it bound it;
a restart keeps its port (tests/replicas/test_cluster_e2e.py failed once: [Errno 98] in start-up)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.cluster import PORT_TRIES, Replica, wait_for
from simulator.errors import ServerError


def _serve_or_fail(replica: Replica) -> None:
    """``ota serve``'s start-up in miniature: bind the replica's port and say ready, or print the
    bind's error and exit; waited for as :meth:`Replica._launch` waits."""
    ready = replica.data_dir / "ready.json"
    ready.unlink(missing_ok=True)
    code = (
        "import pathlib, socket, sys, time\n"
        "s = socket.socket()\n"
        "try:\n"
        f"    s.bind(('127.0.0.1', {replica.port}))\n"
        "except OSError as e:\n"
        "    print('OSError:', e, flush=True)\n"
        "    sys.exit(1)\n"
        "s.listen()\n"
        f"pathlib.Path({str(ready)!r}).write_text('{{}}')\n"
        "time.sleep(60)\n"
    )
    with replica.log_path.open("ab") as log:
        replica.proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    replica.starts += 1
    wait_for(lambda: ready.exists() or not replica.running, "the stand-in server", 20)


@pytest.fixture
def taken() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_first_start_on_a_taken_port_takes_another(
    tmp_path: Path, taken: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(taken.getsockname()[1])
    replica = Replica("r1", tmp_path / "r1", {}, port=port)
    monkeypatch.setattr(Replica, "_launch", lambda self, timeout: _serve_or_fail(self))
    try:
        replica.start()
        assert replica.running and replica.port != port and replica.starts == 2
    finally:
        replica.kill()
        taken.close()


def test_a_restart_keeps_its_port_and_says_why_it_could_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replica = Replica("r1", tmp_path / "r1", {})
    monkeypatch.setattr(Replica, "_launch", lambda self, timeout: _serve_or_fail(self))
    replica.start()
    port = replica.port
    replica.kill()
    with socket.socket() as squatter:  # someone took its port while it was down
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ServerError, match="Address already in use"):
            replica.start()
    assert replica.port == port and replica.starts == 2


def test_a_port_taken_every_time_is_given_up_after_a_few_tries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held: list[socket.socket] = []

    def always_taken(host: str = "127.0.0.1") -> int:
        sock = socket.socket()
        sock.bind((host, 0))
        sock.listen()
        held.append(sock)
        return int(sock.getsockname()[1])

    monkeypatch.setattr("simulator.cluster.free_port", always_taken)
    replica = Replica("r1", tmp_path / "r1", {}, port=always_taken())
    monkeypatch.setattr(Replica, "_launch", lambda self, timeout: _serve_or_fail(self))
    try:
        with pytest.raises(ServerError, match="Address already in use"):
            replica.start()
        assert replica.starts == PORT_TRIES
    finally:
        for sock in held:
            sock.close()
