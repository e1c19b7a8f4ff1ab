"""What the Director assigns to one ECU, after the checks: plain data, no python-tuf.

It lives apart from :mod:`firmware_bundles.uptane` so that the agent's journal,
installer and health check can hold assignments without importing python-tuf:
an idle agent on a Raspberry Pi then loads the verifying stack only when a
campaign arrives.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Assignment:
    """One image the Director assigns to one ECU of this vehicle, after the checks."""

    path: str
    ecu_serial: str
    hardware_id: str
    version: str
    release_counter: int
    length: int
    sha256: str
    # The image inside the bundle, when the repository signs it (needed to use a delta).
    image_sha256: str | None = None
    image_size: int | None = None
    # The recall's minimum release counter: the car keeps the highest it has accepted as a floor.
    min_release_counter: int | None = None
    # The recall's policy when one of the car's ECUs fails (signed by the Director): every ECU
    # back on its old image ("all_or_nothing", also when absent), or the ECUs that booted
    # healthy keep the fix and only the failing one goes back ("keep_successful").
    ecu_failure_policy: str | None = None
