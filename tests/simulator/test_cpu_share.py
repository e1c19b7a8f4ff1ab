"""Each service a run starts in a session of its own: its own share of the CPU (simulator.cpu_share)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from simulator.cpu_share import autogroup_enabled
from simulator.server_process import ServerProcess


def test_whether_the_kernel_shares_the_cpu_by_session_is_read_from_proc(tmp_path: Path) -> None:
    switch = tmp_path / "sched_autogroup_enabled"
    switch.write_text("1\n")
    assert autogroup_enabled(switch) is True
    switch.write_text("0\n")
    assert autogroup_enabled(switch) is False
    assert autogroup_enabled(tmp_path / "missing") is None


def test_the_benchs_server_runs_in_a_session_of_its_own_and_is_stopped_with_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    server = ServerProcess(tmp_path / "server", env=env, own_session=True)
    with server:
        pid = server.pid
        assert pid is not None
        assert os.getsid(pid) == pid  # its own session (and so its own autogroup)
        assert os.getsid(pid) != os.getsid(0)
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_by_default_a_server_stays_in_its_starters_session(tmp_path: Path) -> None:
    """The demo's and the tests' servers: a signal to the starter's process group reaches them."""
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    with (server := ServerProcess(tmp_path / "server", env=env)):
        assert server.pid is not None and os.getsid(server.pid) == os.getsid(0)
