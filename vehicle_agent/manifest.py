"""The car's own word: a signed version manifest of what every ECU runs.

The server's record of a car is only as good as what the car proves it runs, so each
ECU's image is measured from its active slot (a tampered or hand-flashed image shows
as a hash the Director never assigned), while version, release counter and the target
it came from are the journal's record of the last committed install (none for the
factory image). Hashing a big image every day on an idle car would be waste: the
measure is kept per slot until the slot's cheap fingerprint (a stat, a write count)
changes; a backend without one is measured every time.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import Any

from firmware_bundles.messages import EcuManifest, ManifestReason, VersionManifest
from vehicle_agent.config import AGENT_VERSION, EcuConfig
from vehicle_agent.errors import UpdateFailed
from vehicle_agent.installer import SlotBackend
from vehicle_agent.journal import JournalData

log = logging.getLogger(__name__)


class ImageMeter:
    """sha256 and length of each ECU's active image, re-measured only when its slot changed."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[Hashable, str, int | None]] = {}
        self.measured = 0  # full reads of a slot (how often the cache missed)

    def measure(self, serial: str, slots: SlotBackend, slot: str) -> tuple[str | None, int | None]:
        """The image's (sha256, length); (None, None) when the slot cannot be read (said in the log)."""
        fingerprint = _fingerprint(slots, slot)
        cached = self._cache.get((serial, slot))
        if fingerprint is not None and cached is not None and cached[0] == fingerprint:
            return cached[1], cached[2]
        try:
            sha256, length = _measure(slots, slot)
        except (OSError, UpdateFailed) as exc:
            log.warning("ECU %s: slot %s unreadable for the manifest: %s", serial, slot, exc)
            self._cache.pop((serial, slot), None)
            return None, None
        self.measured += 1
        if fingerprint is not None:
            self._cache[(serial, slot)] = (fingerprint, sha256, length)
        return sha256, length


def build_manifest(
    *,
    vin: str,
    counter: int,
    reason: ManifestReason,
    ecus: tuple[EcuConfig, ...],
    slots: Mapping[str, SlotBackend],
    journal: JournalData,
    meter: ImageMeter,
    sent_at: datetime,
) -> VersionManifest:
    """The unsigned manifest: every configured ECU, measured from its active slot."""
    entries = []
    for ecu in ecus:
        version, release_counter = journal.installed.get(ecu.serial, (ecu.installed_version, 0))
        ecu_slots = slots[ecu.serial]
        slot: str | None
        try:
            slot = ecu_slots.active_slot()
        except (OSError, UpdateFailed) as exc:
            log.warning("ECU %s: boot state unreadable for the manifest: %s", ecu.serial, exc)
            slot = None
        sha256, length = meter.measure(ecu.serial, ecu_slots, slot) if slot is not None else (None, None)
        target = journal.images.get(ecu.serial)
        entries.append(
            EcuManifest(
                ecu_serial=ecu.serial,
                hardware_id=ecu.hardware_id,
                version=version,
                release_counter=release_counter,
                image_sha256=sha256,
                image_length=length,
                target_path=target.path if target else None,
                target_sha256=target.sha256 if target else None,
                target_length=target.length if target else None,
                slot=slot,
            )
        )
    return VersionManifest(
        vin=vin, counter=counter, reason=reason, agent_version=AGENT_VERSION, ecus=tuple(entries), sent_at=sent_at
    )


def _fingerprint(slots: SlotBackend, slot: str) -> Hashable | None:
    fingerprint: Any = getattr(slots, "slot_fingerprint", None)
    if fingerprint is None:
        return None
    try:
        value: Hashable | None = fingerprint(slot)
    except (OSError, UpdateFailed, KeyError):
        return None
    return value


def _measure(slots: SlotBackend, slot: str) -> tuple[str, int | None]:
    """One read when the backend can count as it hashes; else the hash alone (no length)."""
    measure: Any = getattr(slots, "measure_slot", None)
    if measure is not None:
        sha256, length = measure(slot)
        return str(sha256), int(length)
    return slots.slot_sha256(slot), None
