"""Where a launch's notifying ticks spend their time, per car, stage by stage (issue 19).

    python -m bench.notify_path --cars 5000

The server in-process (as the tests run it: ASGI client, a recording publisher, no broker) on
a fresh PostgreSQL database, notices carrying each car's signed Director chain; the test
helpers register and provision the fleet, upload a release and file a recall with one wave and
no rate limit (the plan ``ota-bench`` uses). Then one launch, timed from the request until the
last notice is published, with every stage of the notifying path wrapped by a timer: each
stage's wall and CPU time (the CPU of the thread that ran it) summed over the ticks, and per car.

The stages nest (``sign`` is inside ``assign``, ``sign chains`` inside ``sign``): the table
says which, and ``tick other`` is a tick's time outside the notifier (campaign rules, counts,
commit). What the process spent in total (every thread, ``time.process_time``) and what the
PostgreSQL server processes spent over the same span close the table.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ota_server.config import Settings

_CHUNK = 1000  # cars per registration and provisioning request
MAX_CARS = 30_000  # ~30 s of set-up at the most
PLAN: dict[str, Any] = {"waves": [{"percent": 100}], "retry_backoff_s": 5}


@dataclass
class Stage:
    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0


@dataclass
class Timers:
    stages: dict[str, Stage] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            stage = self.stages.setdefault(name, Stage())
            stage.wall += time.perf_counter() - wall
            stage.cpu += time.thread_time() - cpu
            stage.calls += 1

    def wrap(self, owner: Any, attribute: str, name: str, profiles: list[cProfile.Profile] | None = None) -> None:
        """Time every call of ``owner.attribute`` (a function or method) as stage ``name``;
        with ``profiles``, each call is profiled too (one profiler per call: the ticks and the
        delivery bookkeeping run in different threads, at the same time)."""
        original: Callable[..., Any] = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.timed(name):
                if profiles is None:
                    return original(*args, **kwargs)
                profile = cProfile.Profile(time.thread_time)  # CPU: not the time waiting for the GIL
                profiles.append(profile)
                return profile.runcall(original, *args, **kwargs)

        setattr(owner, attribute, timed)


# (module, attribute path, stage name, what it is)
STAGES: list[tuple[str, str, str, str]] = [
    ("ota_server.services.campaigns", "launch", "launch", "the approval's launch: campaign, cars, ECUs (request)"),
    ("ota_server.services.campaigns", "launchable", "launch: population", "release checks, population (in launch)"),
    ("ota_server.services.inventory", "already_remedied", "launch: remedied", "cars already fixed (in launch)"),
    ("ota_server.rollout.transitions", "enroll", "launch: enroll", "campaign cars written (in launch)"),
    ("ota_server.services.campaigns", "freeze_ecus", "launch: ECUs", "affected ECUs written (in launch)"),
    ("ota_server.services.campaigns", "analyze_loaded", "launch: analyze", "ANALYZE after the load (in launch)"),
    ("ota_server.services.campaign_view", "public", "launch: view", "the campaign as answered (in launch)"),
    ("ota_server.rollout.coordinator", "Coordinator.tick_sync", "tick", "a whole tick (thread)"),
    ("ota_server.rollout.notifying", "Notifier.release", "release", "the notifier, in the tick"),
    ("ota_server.rollout.notifying", "Notifier._contenders", "contenders", "other campaigns holding cars"),
    ("ota_server.rollout.notifying", "Notifier._busy", "busy", "cars another campaign holds"),
    ("ota_server.services.campaign_fleet", "CampaignFleet.assign", "assign", "population, queue, sign"),
    ("ota_server.services.population", "resolve_all", "resolve", "population resolve (in assign)"),
    ("ota_server.signing.director", "Director.queue", "queue", "queued rows written (in assign)"),
    ("ota_server.signing.director", "Director.sign_queued", "sign", "lock, read, sign, write (in assign)"),
    ("ota_server.signing.director", "Director.sign_now", "sign", "sign straight from the plan, write (in assign)"),
    ("ota_server.signing.director", "Director.signed_now", "sign", "sign straight from the plan (in assign)"),
    (
        "ota_server.signing.director",
        "Director._sign_plan",
        "sign: plan",
        "previous, chains (in sign; older: write)",
    ),
    ("ota_server.signing.director", "Signed.write", "write chains", "the chains written (tick, beside the notices)"),
    ("ota_server.signing.director", "Director._lock_queued", "sign: lock queued", "(in sign)"),
    ("ota_server.signing.director", "Director._previous", "sign: previous", "(in sign)"),
    ("ota_server.signing.director", "Director._sign", "sign: chains", "Metadata, canonical JSON, ed25519 (in sign)"),
    ("ota_server.signing.director", "sign_chain", "sign: chains", "Metadata, canonical JSON, ed25519 (in sign)"),
    ("ota_server.signing.signing_pool", "SigningPool.sign", "sign: pool", "signing processes, waited for (in sign)"),
    ("ota_server.signing.prepared", "PreparedChains.take", "sign: ahead", "chains signed ahead, matched (in sign)"),
    ("ota_server.rollout.transitions", "mark_notified", "mark", "cars marked notified"),
    ("ota_server.services.campaign_fleet", "CampaignFleet.notices", "notices", "notices built, chains carried"),
    ("ota_server.services.campaign_fleet", "NoticeBatch.make", "notices", "notices built, chains carried"),
    ("ota_server.services.campaign_fleet", "NoticeBytes.encode", "notice bytes", "each notice spliced (in notices)"),
    ("ota_server.mqtt.notices", "encode", "publish encode", "a notice encoded to publish (older code; a restart's)"),
    ("ota_server.mqtt.notices", "NoticeDispatcher._mark", "mark published", "delivery recorded (thread)"),
]


PROFILED = ("tick", "mark published")  # the thread work, whole: what --profile profiles


def _install(timers: Timers, profiles: list[cProfile.Profile] | None) -> None:
    import importlib

    for module_name, path, name, _ in STAGES:
        owner: Any = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is not None and hasattr(owner, attribute):  # older code (a before/after pair) may lack a stage
            timers.wrap(owner, attribute, name, profiles if name in PROFILED else None)


async def _run(
    cars: int,
    database_url: str,
    data_dir: Path,
    profiles: list[cProfile.Profile] | None = None,
    signing_processes: int | None = None,
    signed_ahead: bool = False,
) -> dict[str, Any]:
    from tests.ota_server.conftest import make_settings

    timers = Timers()
    _install(timers, profiles)
    from ota_server.config import SIGNING_PROCESSES

    # The server's default, not the tests' (which start no signing process)
    processes = SIGNING_PROCESSES if signing_processes is None else signing_processes
    settings = make_settings(
        data_dir, database_url=database_url, notice_carries_metadata=True, director_signing_processes=processes
    )
    with _collector_as_served():
        return await _launched(cars, settings, timers, signed_ahead, processes)


async def _launched(
    cars: int, settings: Settings, timers: Timers, signed_ahead: bool, processes: int
) -> dict[str, Any]:
    from simulator.procstat import command_cpu_seconds
    from tests.ota_server.conftest import running
    from tests.ota_server.helpers import HW, provision, recall_body, upload, vehicle, vin

    async with running(settings) as env:
        client = env.client
        vins = [vin(n) for n in range(1, cars + 1)]
        setup = time.perf_counter()
        for start in range(0, cars, _CHUNK):
            chunk = vins[start : start + _CHUNK]
            resp = await client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in chunk]})
            assert resp.status_code == 201, resp.text
            await provision(client, chunk)
        release = await upload(client)
        assert release.status_code == 201, release.text
        body = recall_body(release.json()["id"], hardware_id=HW) | {"rollout": PLAN, "safety_recall": signed_ahead}
        recall = await client.post("/api/v1/recalls", json=body)
        assert recall.status_code == 201, recall.text
        launch = f"/api/v1/recalls/{recall.json()['id']}/launch"
        approver: dict[str, str] = {}
        prepared_s = None
        if signed_ahead:  # requested by one person, its chains signed ahead, approved by another
            approver = await env.headers_for("sam", "approver")
            started = time.perf_counter()
            resp = await client.post(launch, headers=await env.headers_for("olga", "operator"))
            assert resp.status_code == 202, resp.text
            await env.runtime.rollout.preparations.wait()
            prepared_s = time.perf_counter() - started
            launch = f"/api/v1/recalls/{recall.json()['id']}/approve"
        setup = time.perf_counter() - setup

        first, last = [0.0], [0.0]
        publisher = env.publisher
        publish = publisher.publish

        async def stamped(topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
            await publish(topic, payload, qos=qos, retain=retain)
            last[0] = time.perf_counter()
            first[0] = first[0] or last[0]

        publisher.publish = stamped  # type: ignore[method-assign]
        timers.stages.clear()
        gc_threshold = list(gc.get_threshold())
        pg0, cpu0, t0 = command_cpu_seconds("postgres"), time.process_time(), time.perf_counter()
        resp = await client.post(launch, headers=approver)
        assert resp.status_code == 201, resp.text
        launched = time.perf_counter()
        await env.runtime.coordinator.idle()
        await env.runtime.dispatcher.idle()
        done = time.perf_counter()
        cpu, pg = time.process_time() - cpu0, command_cpu_seconds("postgres") - pg0
        published = len(publisher.messages)
        carried = sum(b"director_metadata" in m.payload for m in publisher.messages)
    return {
        "cars": cars,
        "setup_s": setup,
        "notices": published,
        "carrying_chain": carried,
        "signing_processes": processes,
        "signed_ahead_s": prepared_s,
        "launch_request_s": launched - t0,
        "launch_to_first_notice_s": first[0] - t0,
        "launch_to_last_notice_s": last[0] - t0,
        "launch_to_idle_s": done - t0,
        "process_cpu_s": cpu,
        "postgres_cpu_s": pg,
        "stages": {name: vars(stage) for name, stage in timers.stages.items()},
        "gc_threshold": gc_threshold,
    }


@contextmanager
def _collector_as_served() -> Iterator[None]:
    """The garbage collector as ``ota serve`` sets it once started (:func:`gctime.settle`), then as it was.

    Without it the stages were timed under Python's defaults, a young collection every 700
    allocations walking the fleet's set-up: 6.2 s from the approval to the last notice against
    4.1 s (30,000 cars, idle), most of the difference collections inside the notices' loop.
    """
    from ota_server.infra import gctime

    was = gc.get_threshold()
    gctime.settle()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*was)


def _table(result: dict[str, Any]) -> str:
    cars = result["cars"]
    lines = [
        f"cars {cars}, notices {result['notices']} ({result['carrying_chain']} carrying the chain), "
        f"signing processes {result['signing_processes']}, "
        f"setup {result['setup_s']:.1f} s"
        + (
            ""
            if result.get("signed_ahead_s") is None
            else f" (a safety recall: chains signed ahead in {result['signed_ahead_s']:.2f} s, timed from the approval)"
        ),
        f"launch request {result['launch_request_s']:.2f} s, "
        f"launch to first notice {result['launch_to_first_notice_s']:.2f} s, "
        f"last {result['launch_to_last_notice_s']:.2f} s; "
        f"process CPU {1000 * result['process_cpu_s'] / cars:.3f} ms/car, "
        f"PostgreSQL CPU {1000 * result['postgres_cpu_s'] / cars:.3f} ms/car",
        "",
        "| stage | what | calls | wall s | CPU s | CPU ms/car |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    about = {name: what for _, _, name, what in STAGES}
    for name, stage in result["stages"].items():
        lines.append(
            f"| {name} | {about.get(name, '')} | {stage['calls']} | {stage['wall']:.3f} | {stage['cpu']:.3f} "
            f"| {1000 * stage['cpu'] / cars:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cars", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--profile", type=Path, help="cProfile the ticks and the delivery bookkeeping into this file")
    parser.add_argument(
        "--signing-processes",
        type=int,
        help="the server's OTA_DIRECTOR_SIGNING_PROCESSES (default: the server's default; 0: sign in the server)",
    )
    parser.add_argument(
        "--signed-ahead",
        action="store_true",
        help="a safety recall: its launch requested, its chains signed ahead, then approved (timed from the approval)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.cars <= MAX_CARS:
        parser.error(f"--cars: 1 to {MAX_CARS}")
    if args.signing_processes is not None and args.signing_processes < 0:
        parser.error("--signing-processes: 0 or more")
    from tests import services

    with services.fresh_postgres_database() as url, tempfile.TemporaryDirectory() as data_dir:
        profiles: list[cProfile.Profile] | None = [] if args.profile else None
        result = asyncio.run(_run(args.cars, url, Path(data_dir), profiles, args.signing_processes, args.signed_ahead))
    print(_table(result))
    if args.profile and profiles:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(args.profile)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
