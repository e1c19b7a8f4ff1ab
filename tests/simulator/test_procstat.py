"""CPU accounting from /proc: a command's processes, their finished children included."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.procstat import command_cpu_seconds, cpu_seconds, descendants, tree_cpu_seconds, tree_peak_rss_mb

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"


def _interpreter_named(tmp_path: Path) -> tuple[str, str]:
    """The interpreter under a name no other process has (/proc's comm is the executable's name)."""
    name = f"cpuprobe{secrets.token_hex(3)}"
    link = tmp_path / name
    os.symlink(os.path.realpath(sys.executable), link)
    return str(link), name


def test_a_command_counts_its_live_processes(tmp_path: Path) -> None:
    python, name = _interpreter_named(tmp_path)
    assert command_cpu_seconds(name) == 0.0
    child = subprocess.Popen([python, "-c", BURN + "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while cpu_seconds(child.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert command_cpu_seconds(name) >= 0.25
    finally:
        child.kill()
        child.wait()


def test_finished_children_stay_counted_in_their_parent(tmp_path: Path) -> None:
    """A database server's exited backends: their CPU moves to the parent's cutime/cstime."""
    python, name = _interpreter_named(tmp_path)
    script = f"import subprocess, time\nsubprocess.run([{python!r}, '-c', {BURN!r}])\ntime.sleep(30)"
    parent = subprocess.Popen([python, "-c", script])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            fields = Path(f"/proc/{parent.pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[13]) + int(fields[14]) > 0:  # the child's time arrived in cutime + cstime
                break
            time.sleep(0.05)
        assert cpu_seconds(parent.pid) < 0.2  # the parent itself only waited
        assert command_cpu_seconds(name) >= 0.25  # the finished child's 0.3 s is still counted
    finally:
        parent.kill()
        parent.wait()


def test_a_process_tree_counts_its_live_children_too() -> None:
    """The server's signing processes: their CPU and memory are the server's (ota-bench)."""
    child = BURN + "time.sleep(30)"
    script = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}])\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 15
        children: list[int] = []
        while time.monotonic() < deadline:
            children = descendants(parent.pid)
            if children and cpu_seconds(children[0]) >= 0.25:
                break
            time.sleep(0.05)
        assert len(children) == 1
        assert cpu_seconds(parent.pid) < 0.2  # the parent itself only waited
        assert tree_cpu_seconds(parent.pid) >= 0.25  # its live child's work counted with it
        own, tree = tree_peak_rss_mb(children[0]), tree_peak_rss_mb(parent.pid)
        assert own is not None and tree is not None and tree > own
    finally:
        for pid in descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def test_the_gc_timer_counts_collections_and_their_time() -> None:
    import gc

    from ota_server.infra.gctime import GcTimer

    timer = GcTimer().install()
    try:
        gc.collect()  # a full collection: generation 2
        gc.collect(0)
    finally:
        gc.callbacks.remove(timer._on_gc)
    figures = timer.as_json()
    assert figures["gc_collections_by_generation"][2] >= 1
    assert figures["gc_collections_by_generation"][0] >= 1
    assert figures["gc_seconds"] >= 0 and len(figures["gc_seconds_by_generation"]) == 3
    assert "gc_collections_since_mark_by_generation" not in figures


def test_the_timer_says_what_the_collector_spent_since_its_mark() -> None:
    import gc

    from ota_server.infra.gctime import GcTimer

    timer = GcTimer().install()
    try:
        gc.collect()
        before = timer.as_json()["gc_collections_by_generation"]
        timer.mark()
        gc.collect()
        gc.collect()
    finally:
        gc.callbacks.remove(timer._on_gc)
    figures = timer.as_json()
    assert figures["gc_collections_since_mark_by_generation"][2] == 2
    assert figures["gc_collections_by_generation"][2] == before[2] + 2
    assert all(s >= 0 for s in figures["gc_seconds_since_mark_by_generation"])


def test_settle_freezes_what_exists_and_collects_less_often() -> None:
    import gc

    from ota_server.infra import gctime

    before = gc.get_threshold()
    try:
        gctime.settle()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == gctime.THRESHOLDS and gctime.THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
