"""The agent's saved state: one JSON file written atomically before each step.

It holds, per campaign, the step reached and what is needed to resume it, the
versions installed per ECU, and an outbox of reports not yet acknowledged by the
broker (re-sent later; duplicates are fine, the server is idempotent).

A step and the report announcing it are saved in ONE write, so a power cut can never
leave a terminal state without its report queued. The previous good file is kept as
``journal.json.prev``: a file torn or corrupted by the storage (SD cards do that) is
set aside and the previous one is used, so the agent always starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from firmware_bundles.assignment import Assignment
from firmware_bundles.messages import FailureReason, ReportState, StatusReport, VersionManifest

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1
MAX_OUTBOX = 200


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def single_writer_temp(path: Path) -> str:
    """The one temp file name of a ``path`` only its owner writes (see :func:`write_atomically`)."""
    return str(path.parent / f".{path.name}.tmp")


def write_atomically(path: Path, data: bytes, *, durable: bool = True, temp: str | None = None) -> None:
    """Temp file, fsync, rename, fsync the directory: the file is old or new, never torn.

    The temp file has a unique name, unless the caller is the only one writing ``path``
    (e.g. under its own lock) and names it (``temp``, from :func:`single_writer_temp`, made
    once): one name spares making a unique one each time (the journal is written at every
    step) and leaves no stray temp file behind a crash, the next write truncating it.
    """
    if temp is not None:
        tmp = temp
        fd = os.open(tmp, _TEMP_FLAGS, 0o600)  # the mode mkstemp gives
    else:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (a rename lives in the directory, not the file)."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class Target:
    """One assignment being installed, and the slot it went into once known."""

    assignment: Assignment
    slot: str | None = None


@dataclass(frozen=True)
class OwnerEvent:
    """What the owner was shown or answered (``what``: notice, consent, result): the notice log.

    A consent event also names the images key it answered (``images``: the signed bundles'
    sha256) and where the answer came from (``channel``: head_unit, cli, owner_page).
    """

    at: str
    attempt: int
    what: str
    text: str
    images: str = ""
    channel: str = ""


@dataclass(frozen=True)
class CampaignRecord:
    campaign_id: int
    nonce: str
    state: ReportState
    attempt: int = 1
    targets: tuple[Target, ...] = ()
    reason: FailureReason | None = None
    detail: str = ""
    # Times the reboot step was started (journaled first): bounds reboot and crash loops.
    boot_attempts: int = 0
    # Deferrals so far in this attempt (each deferred report carries the new count).
    deferrals: int = 0
    # The owner said yes to this attempt (non-safety updates only) ...
    consented: bool = False
    # ... to exactly these images (firmware_bundles.consent.images_key of the signed assignment).
    consent_images: str = ""
    # The notice that started this attempt (JSON): preconditions and owner notice for a resume.
    notice: str = ""
    # The signed size of what is to be downloaded, once verified (0: not known yet).
    bundle_bytes: int = 0
    owner_log: tuple[OwnerEvent, ...] = ()
    # The ECU whose step failed ("" none, or not one ECU's): the failure report's ecu_serial.
    failed_ecu: str = ""
    # The maintenance window the verified Director metadata signed (JSON; "": any hour).
    window: str = ""
    # Fetches in a row that found the signed metadata expired (a fresh one is asked for each time).
    stale_tries: int = 0

    def to_json(self) -> dict[str, Any]:
        # Shallow copies of the plain-data parts: dataclasses.asdict deep-copies recursively
        # and was a third of a simulated car's CPU (the journal is written at every step).
        body = dict(self.__dict__)
        body["state"] = self.state.value
        body["reason"] = self.reason.value if self.reason else None
        body["targets"] = [{"assignment": dict(t.assignment.__dict__), "slot": t.slot} for t in self.targets]
        body["owner_log"] = [dict(e.__dict__) for e in self.owner_log]
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CampaignRecord:
        targets = tuple(Target(Assignment(**t["assignment"]), t.get("slot")) for t in body.get("targets", ()))
        return cls(
            campaign_id=int(body["campaign_id"]),
            nonce=str(body["nonce"]),
            state=ReportState(body["state"]),
            attempt=int(body.get("attempt", 1)),
            targets=targets,
            reason=FailureReason(body["reason"]) if body.get("reason") else None,
            detail=str(body.get("detail", "")),
            boot_attempts=int(body.get("boot_attempts", 0)),
            deferrals=int(body.get("deferrals", 0)),
            consented=bool(body.get("consented", False)),
            consent_images=str(body.get("consent_images", "")),
            notice=str(body.get("notice", "")),
            bundle_bytes=int(body.get("bundle_bytes", 0)),
            owner_log=tuple(OwnerEvent(**e) for e in body.get("owner_log", ())),
            failed_ecu=str(body.get("failed_ecu", "")),
            window=str(body.get("window", "")),
            stale_tries=int(body.get("stale_tries", 0)),
        )

    def advance(self, state: ReportState, **changes: Any) -> CampaignRecord:
        return replace(self, state=state, **changes)


@dataclass
class JournalData:
    campaigns: dict[int, CampaignRecord] = field(default_factory=dict)
    # ECU serial to installed (version, release_counter); seeded from the config.
    installed: dict[str, tuple[str, int]] = field(default_factory=dict)
    # ECU serial to the highest minimum release counter a recall has set (refuse anything below).
    floors: dict[str, int] = field(default_factory=dict)
    outbox: list[StatusReport] = field(default_factory=list)
    # ECU serial to the Image-repository target it was installed from (absent: the factory image).
    images: dict[str, InstalledTarget] = field(default_factory=dict)
    # The last version manifest's counter (the next one gets one more: never reused, even after a crash).
    manifest_counter: int = 0
    # When the last manifest was made (ISO 8601): the daily one is due a day later.
    manifest_at: str = ""
    # The newest manifest not yet delivered (only the newest matters: a newer one replaces it).
    manifest: VersionManifest | None = None


@dataclass(frozen=True)
class InstalledTarget:
    """The signed target an ECU's image came from, as the version manifest names it."""

    path: str
    sha256: str
    length: int


class Journal:
    """Load once, mutate through the methods, each of which saves before returning."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.prev_path = path.with_name(path.name + ".prev")
        self._temp = single_writer_temp(path)
        self._durable = durable
        self.recovered = False  # True when the newest file was unreadable and an older one was used
        self.data = self._load()
        # One save at a time (the agent saves from its event loop and its worker thread), so
        # the temp file can keep one name; and each campaign's and report's JSON, kept while
        # the object is unchanged (records are immutable: a step makes a new one).
        self._lock = threading.Lock()
        self._dir_made = False
        self._campaign_json: dict[int, tuple[CampaignRecord, str]] = {}
        self._report_json: dict[int, tuple[StatusReport, str]] = {}

    def _load(self) -> JournalData:
        """The newest readable copy; a torn or corrupt one is kept aside as ``.corrupt``.

        Raises ValueError only for a journal written by an unknown (newer) agent version,
        which must not be overwritten.
        """
        for candidate in (self.path, self.prev_path):
            try:
                data = self._parse(candidate.read_bytes())
            except FileNotFoundError:
                continue
            except _Unreadable as exc:
                log.error("journal %s is unreadable (%s); set aside, using an older copy", candidate, exc)
                with contextlib.suppress(OSError):
                    os.replace(candidate, candidate.with_name(candidate.name + ".corrupt"))
                self.recovered = True
                continue
            if candidate is not self.path:
                self.recovered = True
            return data
        return JournalData()

    def _parse(self, raw: bytes) -> JournalData:
        try:
            body = json.loads(raw)
            version = body.get("journal_version")
        except (ValueError, AttributeError) as exc:
            raise _Unreadable(str(exc)) from exc
        if version != JOURNAL_VERSION:
            raise ValueError(f"{self.path}: unknown journal version {version!r}")
        try:
            return self._decode(body)
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # pydantic's errors are ValueErrors
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _decode(body: dict[str, Any]) -> JournalData:
        return JournalData(
            campaigns={int(k): CampaignRecord.from_json(v) for k, v in body.get("campaigns", {}).items()},
            installed={k: (str(v[0]), int(v[1])) for k, v in body.get("installed", {}).items()},
            floors={k: int(v) for k, v in body.get("floors", {}).items()},
            outbox=[StatusReport.model_validate(r) for r in body.get("outbox", [])],
            images={
                k: InstalledTarget(str(v["path"]), str(v["sha256"]), int(v["length"]))
                for k, v in body.get("images", {}).items()
            },
            manifest_counter=int(body.get("manifest_counter", 0)),
            manifest_at=str(body.get("manifest_at", "")),
            manifest=VersionManifest.model_validate(body["manifest"]) if body.get("manifest") else None,
        )

    def save(self) -> None:
        with self._lock:
            data = self.encode()
            if not self._dir_made:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._dir_made = True
            # The current file (always one we wrote) becomes the fallback; the new one is
            # renamed over it only once complete. Between the two renames .prev is the newest.
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, self.prev_path)
            write_atomically(self.path, data, durable=self._durable, temp=self._temp)

    def encode(self) -> bytes:
        """The journal file's bytes: compact JSON, each unchanged campaign and report encoded once."""
        campaigns = ",".join(f'"{k}":{self._encoded_campaign(k, v)}' for k, v in self.data.campaigns.items())
        outbox = ",".join(self._encoded_reports())
        installed = _dumps({k: list(v) for k, v in self.data.installed.items()})
        data = self.data
        manifest = "null" if data.manifest is None else data.manifest.model_dump_json(exclude_none=True)
        images = _dumps({k: dict(v.__dict__) for k, v in data.images.items()})
        text = (
            f'{{"journal_version":{JOURNAL_VERSION},"campaigns":{{{campaigns}}},'
            f'"installed":{installed},"floors":{_dumps(data.floors)},"outbox":[{outbox}],'
            f'"images":{images},"manifest_counter":{data.manifest_counter},'
            f'"manifest_at":{_dumps(data.manifest_at)},"manifest":{manifest}}}'
        )
        return text.encode()

    def _encoded_campaign(self, campaign_id: int, record: CampaignRecord) -> str:
        cached = self._campaign_json.get(campaign_id)
        if cached is not None and cached[0] is record:
            return cached[1]
        text = _dumps(record.to_json())
        self._campaign_json[campaign_id] = (record, text)
        return text

    def _encoded_reports(self) -> list[str]:
        """The outbox's reports as JSON; forgets those no longer in it (keyed by identity, object kept)."""
        known, fresh, texts = self._report_json, {}, []
        for report in self.data.outbox:
            cached = known.get(id(report))
            if cached is None or cached[0] is not report:
                cached = (report, _dumps(report.model_dump(mode="json", exclude_none=True)))
            fresh[id(report)] = cached
            texts.append(cached[1])
        self._report_json = fresh
        return texts

    def record(self, campaign: CampaignRecord, report: StatusReport | None = None) -> None:
        """Save a campaign's step and (optionally) the report announcing it, in one write."""
        self.data.campaigns[campaign.campaign_id] = campaign
        if report is not None:
            self._append(report)
        self.save()

    def campaign(self, campaign_id: int) -> CampaignRecord | None:
        return self.data.campaigns.get(campaign_id)

    def unfinished(self) -> list[CampaignRecord]:
        return [c for c in self.data.campaigns.values() if not c.state.terminal]

    def raise_floor(self, serial: str, counter: int) -> int:
        """Keep the highest floor seen for ``serial``; return it. Saved with the step's next write."""
        floor = max(self.data.floors.get(serial, 0), counter)
        self.data.floors[serial] = floor
        return floor

    def set_installed(
        self, serial: str, version: str, release_counter: int, target: InstalledTarget | None = None
    ) -> None:
        self.data.installed[serial] = (version, release_counter)
        if target is not None:
            self.data.images[serial] = target
        self.save()

    def next_manifest_counter(self) -> int:
        """The counter for a new manifest (saved with it by :meth:`queue_manifest`)."""
        return self.data.manifest_counter + 1

    def queue_manifest(self, manifest: VersionManifest, made_at: str) -> None:
        """Keep ``manifest`` as the one to send (replacing an undelivered older one) and its counter, in one write."""
        self.data.manifest = manifest
        self.data.manifest_counter = max(self.data.manifest_counter, manifest.counter)
        self.data.manifest_at = made_at
        self.save()

    def enqueue(self, report: StatusReport) -> None:
        self._append(report)
        self.save()

    def _append(self, report: StatusReport) -> None:
        outbox = self.data.outbox
        outbox.append(report)
        if len(outbox) > MAX_OUTBOX:
            # Keep terminal reports: they are the ones the server must not miss.
            keep = [r for r in outbox if r.state.terminal][-MAX_OUTBOX:]
            outbox[:] = keep

    def acknowledge(self, report: StatusReport) -> None:
        with contextlib.suppress(ValueError):
            self.data.outbox.remove(report)
            self.save()

    def acknowledge_all(self, reports: Sequence[StatusReport], manifest: VersionManifest | None = None) -> None:
        """Drop what one message carried, in one write: its steps (each only if still in the
        outbox) and ``manifest`` (unless a newer one replaced it meanwhile)."""
        sent = {id(r) for r in reports}
        kept = [r for r in self.data.outbox if id(r) not in sent]
        changed = len(kept) != len(self.data.outbox)
        if changed:
            self.data.outbox[:] = kept
        if manifest is not None and self.data.manifest is manifest:
            self.data.manifest = None
            changed = True
        if changed:
            self.save()


def _dumps(value: Any) -> str:
    # Compact, by orjson: ~10x json's C encoder on a campaign record (the journal is written at every step).
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class _Unreadable(Exception):
    """A journal file that is torn or corrupt (as opposed to one from an unknown version)."""
