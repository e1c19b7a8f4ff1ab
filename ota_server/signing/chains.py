"""One car's Director chain (targets, snapshot, timestamp) signed from its order: the pure step.

The Director (:mod:`ota_server.signing.director`) reads the previous versions and writes the
rows; this is what lies between, the same whether the server's own process runs it or a
signing process (:mod:`ota_server.signing.signing_pool`): an order in, the signed bytes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuf.api.metadata import TargetFile

from firmware_bundles.uptane import Expiry, RepoVersions, RoleSigners, director_target, publish_targets
from firmware_bundles.window import WINDOW_FIELD

# A VIN's chain as signed: file name -> (version, bytes).
Chain = dict[str, tuple[int, bytes]]


@dataclass(frozen=True)
class ChainOrder:
    """What one car's next chain says: each ECU's image (by serial) with its floor, the recall's
    ECU failure policy and the car's maintenance window, after the chain versions ``previous``."""

    vin: str
    images: Mapping[str, TargetFile]
    previous: RepoVersions
    floors: Mapping[str, int | None] = field(default_factory=dict)
    policy: str | None = None
    window: Mapping[str, Any] | None = None


def sign_chain(signers: RoleSigners, expiry: Expiry, now: datetime, order: ChainOrder) -> Chain:
    """The car's next targets (the VIN and any window in its signed part), snapshot and timestamp."""
    # TUF keys targets by path, so one chain names a bundle once: with two ECUs of
    # the same hardware the first serial given gets it.
    targets: dict[str, TargetFile] = {}
    for serial, image in order.images.items():
        targets.setdefault(
            image.path,
            director_target(
                image,
                order.vin,
                serial,
                min_release_counter=order.floors.get(serial),
                ecu_failure_policy=order.policy,
            ),
        )
    extra: dict[str, Any] = {"vin": order.vin} | ({WINDOW_FIELD: dict(order.window)} if order.window else {})
    versions, files = publish_targets(targets, signers, expiry, now, order.previous, extra=extra)
    return {
        "targets.json": (versions.targets, files["targets.json"]),
        "snapshot.json": (versions.snapshot, files["snapshot.json"]),
        "timestamp.json": (versions.timestamp, files["timestamp.json"]),
    }
