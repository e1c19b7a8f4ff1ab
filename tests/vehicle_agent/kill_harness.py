"""Run one real agent in this process until it finishes, or kill it (SIGKILL) at a chosen point.

``python -m tests.vehicle_agent.kill_harness spec.json``. The spec (written by
:func:`write_spec`) names the served repository (a JSON dump of a
:class:`~tests.vehicle_agent.fakes.FakeServer`'s files), the state directory, the notice
file (delivered at every start, like a retained MQTT message), the report file (the
"server": one JSON report per line, appended and fsynced) and where to die:

* ``kill_at``: a boundary label with its occurrence, e.g. ``step:installing#1``. Labels
  are emitted after every journal write (``step:<state>`` for a step and its report,
  ``boot-attempt``, ``installed``, ``ack:<state>``, ``ack:manifest:<reason>``), after every report reaches the
  server (``sent:<state>``) and after every boot-state change (``boot:<transition>``);
* ``kill_download_at`` / ``kill_write_at``: a byte offset in the bundle download or the
  slot write.

Every label is appended to ``labels`` (when given), so a clean run enumerates the boundaries.

``--serve`` starts a fork server: it imports everything once, then reads spec paths on
stdin, runs each in a forked child (stderr to ``<spec>.err``) and answers with the
child's exit code (``-9`` when killed), so the table costs milliseconds per start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_bundles.messages import ReportBatch, StatusReport, VersionManifest, encode, parse_status_message
from firmware_bundles.uptane import Assignment
from vehicle_agent.agent import Agent
from vehicle_agent.config import AgentConfig, EcuConfig
from vehicle_agent.errors import LinkDown
from vehicle_agent.installer import FileSlots, SlotBackend
from vehicle_agent.journal import CampaignRecord, InstalledTarget, Journal
from vehicle_agent.link import CampaignMessage, NoticeFilter
from vehicle_agent.transport import Chunks, MemoryTransport

from .fakes import HW, OLD, REPO, SERIAL, FakeServer

Hook = Callable[[str], None]


@dataclass(frozen=True)
class Spec:
    state_dir: Path
    vin: str
    repo: Path
    notices: Path
    reports: Path
    labels: Path | None = None
    kill_at: str | None = None
    kill_download_at: int | None = None
    kill_write_at: int | None = None
    offline: bool = False
    healthy: bool = True
    linger: float = 0.0  # the agent's report_linger_s: above 0, steps go in batches (sent by a task of their own)


def write_spec(path: Path, spec: Spec) -> None:
    body = {k: (str(v) if isinstance(v, Path) else v) for k, v in spec.__dict__.items()}
    path.write_text(json.dumps(body))


def read_spec(path: Path) -> Spec:
    body = json.loads(path.read_text())
    for key in ("state_dir", "repo", "notices", "reports", "labels"):
        if body.get(key) is not None:
            body[key] = Path(body[key])
    return Spec(**body)


def dump_repository(server: FakeServer, path: Path) -> None:
    """The served files and the trusted roots, for the child to serve from memory."""
    files = {
        url: base64.b64encode(body).decode() for url, body in server.transport.files.items() if isinstance(body, bytes)
    }
    roots = {"image_root": server.image_root.decode(), "director_root": server.director_root.decode()}
    path.write_text(json.dumps({"files": files, **roots}))


def reports_in(path: Path) -> list[StatusReport]:
    if not path.exists():
        return []
    steps: list[StatusReport] = []
    for line in path.read_text().splitlines():
        if line.strip():
            message = parse_status_message(line.encode())
            if isinstance(message, ReportBatch):
                steps.extend(message.reports)
            elif isinstance(message, StatusReport):
                steps.append(message)
    return steps


class Boundaries:
    """Counts labels and SIGKILLs this process at the chosen one."""

    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._seen: Counter[str] = Counter()
        # The loop (sends, acks) and the worker thread (slots, journal) both pass boundaries: the
        # kill happens inside the lock, so no other thread's label lands after the chosen one.
        self._lock = threading.Lock()

    def __call__(self, label: str) -> None:
        with self._lock:
            self._seen[label] += 1
            tagged = f"{label}#{self._seen[label]}"
            if self._spec.labels is not None:
                with self._spec.labels.open("a") as out:
                    out.write(tagged + "\n")
            if tagged == self._spec.kill_at:
                die()

    def offset(self, limit: int | None, done: int) -> None:
        if limit is not None and done >= limit:
            die()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FileLink:
    """The link over two files: notices read at start, reports appended (fsynced) to the server file."""

    def __init__(self, spec: Spec, hook: Hook) -> None:
        self.filter = NoticeFilter(spec.vin)
        self.on_connect: Callable[[], Awaitable[None]] | None = None
        self._spec = spec
        self._hook = hook

    async def notices(self) -> AsyncGenerator[CampaignMessage, None]:
        lines = self._spec.notices.read_bytes().splitlines() if self._spec.notices.exists() else []
        for line in lines:
            notice = self.filter.decode(line)
            if notice is not None:
                yield notice

    async def send(self, report: StatusReport | ReportBatch | VersionManifest) -> None:
        if self._spec.offline:
            raise LinkDown("no coverage")
        if isinstance(report, VersionManifest):  # the kill table judges campaign reports only
            return
        with self._spec.reports.open("ab") as out:
            out.write(encode(report) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        for step in report.reports if isinstance(report, ReportBatch) else (report,):
            self._hook(f"sent:{step.state.value}")


class HookedTransport:
    """The served repository, reporting each downloaded bundle byte count to the hook."""

    def __init__(self, inner: MemoryTransport, on_bytes: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_bytes = on_bytes

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        with self._inner.stream(url, start=start) as chunks:
            if "/targets/" not in url:
                yield chunks
                return
            yield Chunks(self._count(chunks, chunks.start), chunks.start)

    def _count(self, chunks: Iterator[bytes], done: int) -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            done += len(chunk)
            self._on_bytes(done)


class Unhealthy:
    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        return "brake controller silent"


def _label_journal(hook: Hook) -> None:
    """Emit a label after each journal write (this process only: it is the harness)."""
    record, set_installed, acknowledge = Journal.record, Journal.set_installed, Journal.acknowledge_all
    queue_manifest = Journal.queue_manifest

    def on_record(self: Journal, campaign: CampaignRecord, report: StatusReport | None = None) -> None:
        before = self.data.campaigns.get(campaign.campaign_id)
        record(self, campaign, report)
        if report is not None:
            hook(f"step:{campaign.state.value}")
        elif before is not None and campaign.boot_attempts != before.boot_attempts:
            hook("boot-attempt")
        else:
            hook(f"record:{campaign.state.value}")

    def on_installed(
        self: Journal, serial: str, version: str, release_counter: int, target: InstalledTarget | None = None
    ) -> None:
        set_installed(self, serial, version, release_counter, target)
        hook("installed")

    def on_manifest(self: Journal, manifest: VersionManifest, made_at: str) -> None:
        queue_manifest(self, manifest, made_at)
        hook(f"manifest:{manifest.reason.value}")

    def on_ack(self: Journal, reports: Sequence[StatusReport], manifest: VersionManifest | None = None) -> None:
        acknowledge(self, reports, manifest)
        for report in reports:
            hook(f"ack:{report.state.value}")
        if manifest is not None:
            hook(f"ack:manifest:{manifest.reason.value}")

    Journal.record = on_record  # type: ignore[method-assign]
    Journal.set_installed = on_installed  # type: ignore[method-assign]
    Journal.queue_manifest = on_manifest  # type: ignore[method-assign]
    Journal.acknowledge_all = on_ack  # type: ignore[method-assign]


def _label_boot_state(hook: Hook) -> None:
    for name in ("set_try", "reboot", "commit", "rollback"):
        original = getattr(FileSlots, name)

        def labelled(self: FileSlots, *args: Any, _original: Any = original, _name: str = name) -> None:
            _original(self, *args)
            hook(f"boot:{_name}")

        setattr(FileSlots, name, labelled)


def build_agent(spec: Spec, boundaries: Boundaries) -> Agent:
    repo = json.loads(spec.repo.read_text())
    served = MemoryTransport({url: base64.b64decode(body) for url, body in repo["files"].items()}, chunk_size=4096)
    config = AgentConfig(
        vin=spec.vin,
        ecus=(EcuConfig(SERIAL, HW, OLD),),
        mqtt_url="mqtt://broker.test:1883",
        repo_url=REPO,
        state_dir=spec.state_dir,
        image_root=repo["image_root"].encode(),
        director_root=repo["director_root"].encode(),
        report_linger_s=spec.linger,
    )

    def slots(ecu: EcuConfig) -> SlotBackend:
        on_chunk = lambda done: boundaries.offset(spec.kill_write_at, done)  # noqa: E731
        directory = spec.state_dir / "slots" / ecu.serial
        return FileSlots.open_or_seed(directory, ecu.hardware_id, ecu.installed_version, on_chunk=on_chunk)

    async def no_sleep(_seconds: float) -> None:
        return None

    return Agent(
        config,
        link=FileLink(spec, boundaries),
        transport=HookedTransport(served, lambda done: boundaries.offset(spec.kill_download_at, done)),
        slots=slots,
        health=None if spec.healthy else Unhealthy(),
        sleep=no_sleep,
        retry_delay=0.0,
    )


def run_spec(spec_path: Path) -> int:
    spec = read_spec(spec_path)
    boundaries = Boundaries(spec)
    _label_journal(boundaries)
    _label_boot_state(boundaries)
    agent = build_agent(spec, boundaries)
    asyncio.run(agent.run())
    return 0


def serve() -> int:
    """Fork one child per spec path read on stdin; print its exit code."""
    for line in sys.stdin:
        spec_path = Path(line.strip())
        pid = os.fork()
        if pid == 0:
            err = os.open(spec_path.with_suffix(".err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(err, 2)
            code = 1
            try:
                code = run_spec(spec_path)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else run_spec(Path(sys.argv[1])))
