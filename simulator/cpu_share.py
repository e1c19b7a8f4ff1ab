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

A service in its own session gets no signal sent to its starter's process group (a terminal's
Ctrl-C, a supervisor stopping the group): whoever started it stops it. ``ota-bench`` does, in
``finally``, on Ctrl-C and on SIGTERM or SIGHUP too (:func:`bench.fleet.main`). The demo, the
tests and ``ota-sim`` start their services in the caller's session, where a signal to the
caller's group reaches them.
"""

from __future__ import annotations

from pathlib import Path

_AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroup_enabled(path: Path = _AUTOGROUP) -> bool | None:
    """Whether the kernel shares the CPU by session (None where it cannot be told: not Linux)."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None
