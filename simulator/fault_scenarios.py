"""Issue 8's fault scenarios on the native multi-node topology, with the figures that matter.

``python -m simulator.fault_scenarios [--cars 200] [--fault kill_replica ...] [--json]`` runs a
recall on two ``ota serve`` replicas sharing a private Mosquitto and a fresh PostgreSQL
database (:mod:`simulator.cluster`), simulated cars split between the replicas' repository
URLs and the operator's calls spread over both, and injects one fault once about a third of
the campaign's reports have been sent:

* ``none``: no fault (the baseline);
* ``kill_replica``: SIGKILL one replica, start it again two seconds later;
* ``restart_broker``: stop Mosquitto (it saves sessions and queued messages), start it again;
* ``database_outage``: PostgreSQL refuses the database's connections for five seconds and cuts
  the open ones.

Each run ends when the campaign is done and every report a car sent is in the database (or
at the timeout). It prints, per fault: cars, remedied, reports sent (distinct steps the cars'
agents produced, each one journaled in their outbox), reports persisted (car events in
PostgreSQL), duplicates dropped (the replicas' counters: redeliveries and re-sends), cars
unaccounted for, and seconds; with ``--json`` also one JSON object a line. Exit code 0 only
when every run held: campaign complete, sent == persisted, no car unaccounted for.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from firmware_bundles.messages import StatusReport
from simulator.cluster import Cluster, wait_for
from simulator.errors import ServerError
from simulator.fleet import make_fleet
from simulator.operator_client import OperatorClient
from simulator.runner import InProcessFleet
from simulator.scenario import (
    ScenarioOptions,
    agent_configs,
    file_recall,
    launch_recall,
    register_fleet,
    second_person,
    upload_fix,
    upload_installed,
)

FAULTS = ("none", "kill_replica", "restart_broker", "database_outage")
STEPS_PER_CAR = 6  # notified, downloading, verifying, installing, rebooting, remedied
TRIGGER_SHARE = 0.3  # the fault strikes once this share of a clean run's reports were sent
# Transient failures a fault causes (a repository URL that does not answer, a database that
# refuses) are retried by the campaign with a new notice: quickly here, so a run stays short.
ROLLOUT = {"max_retries": 10, "retry_backoff_s": 1, "retry_backoff_max_s": 5}


@dataclass
class FaultResult:
    fault: str
    cars: int
    remedied: int
    reports_sent: int
    reports_persisted: int
    duplicates_dropped: int
    unaccounted: list[str]
    seconds: float
    campaign_done: bool
    transmissions: int = 0  # every report handed to the link, re-sends of a terminal report included
    stored_by_replica: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.campaign_done
            and self.reports_sent == self.reports_persisted
            and not self.unaccounted
            and self.remedied == self.cars
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class ReportLog:
    """The reports the cars produced (called from the fleet's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.steps: set[tuple[int, str, int, int, str]] = set()
        self.transmissions = 0

    def __call__(self, report: StatusReport) -> None:
        with self._lock:
            self.transmissions += 1
            self.steps.add((report.campaign_id, report.vin, report.attempt, report.deferrals, report.state.value))

    def sent(self, campaign_id: int) -> int:
        with self._lock:
            return sum(1 for step in self.steps if step[0] == campaign_id)


def _progress(clients: list[OperatorClient], campaign_id: int) -> dict[str, Any] | None:
    """The campaign's progress from whichever replica answers (one may be down, or the database)."""
    for client in clients:
        try:
            return client.progress(campaign_id)
        except (ServerError, httpx.HTTPError):
            continue
    return None


def _inject(fault: str, cluster: Cluster, notes: list[str]) -> None:
    if fault == "kill_replica":
        victim = cluster.replicas[1]
        notes.append(f"SIGKILL {victim.name} (pid {victim.proc.pid if victim.proc else '?'}), restarted after 2 s")
        cluster.restart_replica(victim, down_s=2.0)
    elif fault == "restart_broker":
        notes.append("Mosquitto stopped (SIGTERM, persistence on) and started again after 2 s on the same port")
        cluster.broker.restart(down_s=2.0)
    elif fault == "database_outage":
        notes.append("PostgreSQL refused the database's connections for 5 s (open ones terminated)")
        with cluster.database.outage(5.0):
            wait_for(lambda: not any(r.ready() for r in cluster.replicas), "/readyz to go unready", 10)
            notes.append("both replicas' /readyz answered 503 during the outage")
        wait_for(lambda: all(r.ready() for r in cluster.replicas), "/readyz to be ready again", 60)
    elif fault != "none":
        raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")


def run_scenario(
    fault: str,
    directory: Path,
    *,
    cars: int = 200,
    timeout: float = 240.0,
    say: Callable[[str], None] = lambda _text: None,
) -> FaultResult:
    """One recall on a fresh cluster under ``fault``; the figures, whatever happened."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
    notes: list[str] = []
    log = ReportLog()
    fleet = make_fleet(cars)
    started = time.monotonic()
    with Cluster(directory / "cluster", replicas=2) as cluster:
        r1, r2 = cluster.replicas
        token = cluster.admin_token
        with (
            OperatorClient(r1.api_url, token=token) as one,
            OperatorClient(r2.api_url, token=token) as two,
            second_person(two, "safety-officer") as approver,
        ):
            say(f"{fault}: cluster up ({r1.api_url}, {r2.api_url}, {cluster.broker.url}, {cluster.database.name})")
            upload_installed(one, fleet)
            release = upload_fix(two, fleet, ScenarioOptions())
            register_fleet(one, fleet)
            configs = agent_configs(two, fleet)
            for i, doc in enumerate(configs):  # half the cars use each replica's repository
                doc["repo_url"] = (r1 if i % 2 == 0 else r2).repo_url
            runner = InProcessFleet(directory / "cars", on_report=log)
            runner.start(fleet, configs)
            try:
                runner.wait_connected(timeout=max(30.0, cars / 10))
                cluster.settle()  # not inside the replicas' guard windows: duplicates then mean faults
                recall = file_recall(one, fleet, release, ROLLOUT)
                campaign_id = int(launch_recall(two, recall, approver)["id"])
                say(f"{fault}: campaign {campaign_id} launched to {cars} cars")
                trigger = int(TRIGGER_SHARE * STEPS_PER_CAR * cars)
                wait_for(lambda: log.sent(campaign_id) >= trigger, f"{trigger} reports sent", timeout)
                say(f"{fault}: {log.sent(campaign_id)} reports sent; injecting the fault")
                _inject(fault, cluster, notes)
                clients = [one, two]
                done = False

                def finished() -> bool:
                    nonlocal done
                    progress = _progress(clients, campaign_id)
                    done = bool(progress and progress["done"])
                    return done and cluster.car_events(campaign_id) >= log.sent(campaign_id)

                try:
                    wait_for(finished, "the campaign to complete with every report stored", timeout, poll=0.5)
                except ServerError as exc:
                    notes.append(str(exc))
            finally:
                runner.stop()
            time.sleep(1.0)  # late duplicates (re-sends on reconnect) are counted, not stored
            states = cluster.states(campaign_id)
            unaccounted = [
                str(vin)
                for (vin,) in cluster.database.query(
                    "SELECT vin FROM campaign_vehicles WHERE campaign_id = %s AND state <> 'remedied' ORDER BY vin",
                    campaign_id,
                )
            ]
            stored = {
                (campaign_id, str(vin), int(attempt), int(deferrals), str(state))
                for vin, attempt, deferrals, state in cluster.database.query(
                    "SELECT vin, attempt, deferrals, state FROM campaign_events "
                    "WHERE campaign_id = %s AND source = 'car'",
                    campaign_id,
                )
            }
            missing = sorted(step for step in log.steps if step[0] == campaign_id and step not in stored)
            if missing:
                notes.append(f"{len(missing)} reports sent but not stored, e.g. {missing[:5]}")
            if unaccounted:
                notes.append(f"states: {states}")
            counters = cluster.counters()
            result = FaultResult(
                fault=fault,
                cars=cars,
                remedied=states.get("remedied", 0),
                reports_sent=log.sent(campaign_id),
                reports_persisted=cluster.car_events(campaign_id),
                duplicates_dropped=int(counters.get("ota_reports_duplicate_total", 0)),
                unaccounted=unaccounted,
                seconds=round(time.monotonic() - started, 1),
                campaign_done=done,
                transmissions=log.transmissions,
                stored_by_replica={k: int(v) for k, v in cluster.per_replica_received().items()},
                rejected={
                    key.split('"')[1]: int(v)
                    for key, v in counters.items()
                    if key.startswith("ota_messages_rejected_total{") and v
                },
                notes=notes,
            )
    say(f"{fault}: {'ok' if result.ok else 'FAILED'} in {result.seconds}s")
    return result


def table(results: list[FaultResult]) -> str:
    header = ("fault", "cars", "remedied", "sent", "persisted", "duplicates", "unaccounted", "seconds", "ok")
    rows = [
        (
            r.fault,
            str(r.cars),
            str(r.remedied),
            str(r.reports_sent),
            str(r.reports_persisted),
            str(r.duplicates_dropped),
            str(len(r.unaccounted)),
            f"{r.seconds:.1f}",
            "yes" if r.ok else "NO",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in (header, *rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.fault_scenarios", description=__doc__.split("\n")[0])
    parser.add_argument("--cars", type=int, default=200)
    parser.add_argument("--fault", action="append", choices=FAULTS, help="repeatable; default: all four")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per run")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per run")
    args = parser.parse_args(argv)
    faults = args.fault or list(FAULTS)
    results: list[FaultResult] = []
    with tempfile.TemporaryDirectory(prefix="ota-faults-") as tmp:
        base = args.dir or Path(tmp)
        for fault in faults:
            results.append(
                run_scenario(
                    fault,
                    base / fault,
                    cars=args.cars,
                    timeout=args.timeout,
                    say=lambda text: print(time.strftime("%H:%M:%S"), text, file=sys.stderr, flush=True),
                )
            )
    print(table(results))
    if args.json:
        for result in results:
            print(json.dumps(result.as_json(), sort_keys=True))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
