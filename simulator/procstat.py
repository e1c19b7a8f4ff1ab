"""A process's figures from ``/proc`` (Linux): CPU time, resident memory, its open-file limit.

The one reader of these figures for the simulator, the benches and the tests (``memory_kib``, ``cpu_seconds``).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state, parent id, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc/<pid>/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (its children, theirs, ...), from each process's parent id."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(entry.name)[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        parents.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for parent in frontier for child in parents.get(parent, [])]
        found += children
        frontier = children
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it, live ones and reaped ones alike.

    The server's Director signing processes work for it (``OTA_DIRECTOR_SIGNING_PROCESSES``):
    their CPU is the server's cost per car as much as its own threads' is.
    """
    total = 0
    for member in [pid, *descendants(pid)]:
        try:
            fields = _stat_fields(member)
        except OSError:
            if member == pid:
                raise
            continue  # a child that exited meanwhile: its time is in its parent's cutime now
        total += sum(int(v) for v in fields[11:15])  # utime, stime, and the reaped children's
    return total / CLK_TCK


def command_cpu_seconds(command: str) -> float:
    """CPU seconds of every process named ``command`` (e.g. ``postgres``), exited children included.

    Live processes count their own utime + stime; a process's reaped children (a database
    server's finished backends) are in its cutime + cstime, so their work is not lost.
    """
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        if stat[stat.index("(") + 1 : stat.rindex(")")] != command:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(v) for v in fields[11:15])
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; /proc/stat minus idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of ``pid`` in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory (VmHWM) of a running ``pid`` in MiB; None when it is gone."""
    try:
        return round(memory_kib(pid)["VmHWM"] / 1024, 1)
    except (OSError, KeyError):
        return None


def tree_peak_rss_mb(pid: int) -> float | None:
    """:func:`peak_rss_mb` of ``pid`` plus that of every live process below it; None when ``pid`` is gone."""
    own = peak_rss_mb(pid)
    if own is None:
        return None
    return round(own + sum(peak_rss_mb(child) or 0.0 for child in descendants(pid)), 1)


def open_files(pid: int) -> int:
    """How many file descriptors ``pid`` holds now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit (children inherit it); returns it.

    Every simulated car holds a socket, so a worker with thousands of cars needs the
    whole allowance; a limit the machine sets lower cannot be raised from here.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
