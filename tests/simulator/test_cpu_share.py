"""Each service a run starts in a session of its own: its own share of the CPU (simulator.cpu_share)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.cpu_share import autogroup_enabled, lower_session_priority, session_niceness
from simulator.server_process import ServerProcess


def test_whether_the_kernel_shares_the_cpu_by_session_is_read_from_proc(tmp_path: Path) -> None:
    switch = tmp_path / "sched_autogroup_enabled"
    switch.write_text("1\n")
    assert autogroup_enabled(switch) is True
    switch.write_text("0\n")
    assert autogroup_enabled(switch) is False
    assert autogroup_enabled(tmp_path / "missing") is None


def test_a_sessions_niceness_is_written_and_read_where_the_cpu_is_shared_by_session(tmp_path: Path) -> None:
    switch, proc = tmp_path / "sched_autogroup_enabled", tmp_path / "proc"
    leader = os.getsid(0)  # a process that leads its session: this one's session leader
    (proc / str(leader)).mkdir(parents=True)
    own = proc / str(leader) / "autogroup"
    switch.write_text("1\n")
    own.write_text("/autogroup-85 nice 0\n")
    assert session_niceness(leader, proc) == 0
    assert lower_session_priority(leader, 0, proc, switch) is False  # nothing to lower
    assert lower_session_priority(leader, 7, proc, switch) is True
    assert own.read_text() == "7\n"  # what the kernel takes; it answers "/autogroup-85 nice 7"
    switch.write_text("0\n")
    own.write_text("/autogroup-85 nice 0\n")
    assert lower_session_priority(leader, 7, proc, switch) is False  # shared by task: each task's niceness counts
    assert own.read_text() == "/autogroup-85 nice 0\n"
    with pytest.raises(ValueError, match="0 to 19"):
        lower_session_priority(leader, -1, proc, switch)
    assert session_niceness(12345678, proc) is None
    own.write_text("garbage\n")
    assert session_niceness(leader, proc) is None


def test_a_process_that_does_not_lead_its_session_is_not_lowered(tmp_path: Path) -> None:
    """Lowering the session it only belongs to would lower its starter's (a terminal's) too."""
    switch = tmp_path / "sched_autogroup_enabled"
    switch.write_text("1\n")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            with pytest.raises(ValueError, match="does not lead a session"):
                lower_session_priority(child.pid, 7, tmp_path, switch)
        finally:
            child.kill()
    assert not any(tmp_path.glob("*/autogroup"))


def test_the_kernel_puts_a_whole_session_behind_the_others() -> None:
    """A session of its own, lowered: the kernel reports its niceness, for a child started in it too,
    and the caller's session keeps its own."""
    if autogroup_enabled() is not True:
        pytest.skip("the kernel does not share the CPU by session here")
    before = session_niceness(os.getpid())
    code = "import subprocess, sys, time; subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"
    with subprocess.Popen([sys.executable, "-c", code], start_new_session=True) as leader:
        try:
            assert lower_session_priority(leader.pid, 7) is True
            assert session_niceness(leader.pid) == 7
            deadline = time.monotonic() + 10
            while not (children := _children(leader.pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert children and all(session_niceness(child) == 7 for child in children)
        finally:
            for child in _children(leader.pid):  # read while the leader lives: its child would sleep on orphaned
                os.kill(child, 9)
            leader.kill()
    assert session_niceness(os.getpid()) == before


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(word) for word in path.read_text().split()]
    except OSError:
        return []


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
