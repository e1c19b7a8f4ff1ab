"""Each party of a run on its own share of the machine's CPU, as on machines of their own.

Linux shares the CPU fairly between sessions first, then between the tasks of one session
(autogroup, on by default: ``/proc/sys/kernel/sched_autogroup_enabled``). Started from the
bench's session, the server, each broker and the notice observer would compete task by task
with the simulated fleet: four worker processes of nine threads each. During a 30,000-car
launch the cars then took ~70% of two cores, and the server and the hub waited for a CPU more
than they ran, so the launch's last notice reached the hub 25 s after the approval where the
server alone hands them over in under 1 s (issue 19). In the field each of them has its own
processors and the cars theirs.

So ``ota-bench`` starts each service in a session of its own (``ServerProcess(own_session=True)``,
``BrokerCluster(own_sessions=True)``, the observer always): the scheduler then gives each the
share one more machine would claim, against the whole simulated fleet (the bench and its
workers, one session) as one party. Priorities are not touched: no party runs ahead of another
(``ota-bench --sim-nice`` does that, and starves the cars). Where autogroup is off, or cgroups
place the processes, nothing changes but the session.

With autogroup on, a task's niceness counts only against the tasks of its own session: once the
services had sessions of their own, ``--sim-nice`` (each worker's niceness) no longer put the fleet
behind them. So a worker run at a niceness starts in a session of its own, and that session is
lowered to the same niceness (:func:`lower_session_priority`); at niceness 0 the workers stay in
the bench's session, the fleet one party.

A service in its own session gets no signal sent to its starter's process group (a terminal's
Ctrl-C, a supervisor stopping the group): whoever started it stops it. ``ota-bench`` does, in
``finally``, on Ctrl-C and on SIGTERM or SIGHUP too (:func:`bench.fleet.main`). The demo, the
tests and ``ota-sim`` start their services in the caller's session, where a signal to the
caller's group reaches them.
"""

from __future__ import annotations

import os
from pathlib import Path

_AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")
_PROC = Path("/proc")


def autogroup_enabled(path: Path = _AUTOGROUP) -> bool | None:
    """Whether the kernel shares the CPU by session (None where it cannot be told: not Linux)."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None


def lower_session_priority(pid: int, niceness: int, proc: Path = _PROC, switch: Path = _AUTOGROUP) -> bool:
    """Put the session that process ``pid`` leads (every process in it) at ``niceness`` (0 to 19:
    lower priority only, which needs no privilege) against the other sessions. False when there is
    nothing to do: ``niceness`` 0, or the kernel shares the CPU by task (each task's own niceness
    counts there). ``pid`` must lead its session: lowering a session it merely belongs to would lower
    its starter's too (a terminal's, for as long as it is open)."""
    if not 0 <= niceness <= 19:
        raise ValueError(f"niceness must be 0 to 19, not {niceness}")
    if niceness == 0 or autogroup_enabled(switch) is not True:
        return False
    if os.getsid(pid) != pid:
        raise ValueError(f"process {pid} does not lead a session of its own")
    (proc / str(pid) / "autogroup").write_text(f"{niceness}\n")
    return True


def session_niceness(pid: int, proc: Path = _PROC) -> int | None:
    """The niceness of process ``pid``'s session against the other sessions (None where it cannot be told)."""
    try:
        _, word, value = (proc / str(pid) / "autogroup").read_text().split()  # "/autogroup-85 nice 19"
    except (OSError, ValueError):
        return None
    return int(value) if word == "nice" and value.lstrip("-").isdigit() else None
