"""Builders shared by the server tests: cars, bundles, reports and a settable clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from firmware_bundles import topics
from firmware_bundles.bundle import build_bundle, sample_image
from firmware_bundles.messages import FailureReason, ReportState, StatusReport, encode
from firmware_bundles.report_signing import load_report_signer, sign_report
from firmware_bundles.vin import make_vin

HW = "ecu-main"

# The report keys handed out by the last provisioning of each VIN (as the car would keep them).
REPORT_KEYS: dict[str, CryptoSigner] = {}


class FakeClock:
    """Simulated time: starts at a fixed instant and moves only when told."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def vin(serial: int, wmi: str = "1HG") -> str:
    return make_vin(wmi, "CM826", "N", "A", serial)


def vehicle(
    vin_: str,
    *,
    model: str = "Sedan",
    model_year: int = 2022,
    production_date: date = date(2022, 5, 1),
    hardware_id: str = HW,
    installed_version: str = "1.0.0",
    extra_ecus: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    ecus = [
        {
            "serial": f"S-{vin_[-6:]}",
            "hardware_id": hardware_id,
            "installed_version": installed_version,
            "primary": True,
        }
    ]
    return {
        "vin": vin_,
        "make": "Acme",
        "model": model,
        "model_year": model_year,
        "production_date": production_date.isoformat(),
        "ecus": ecus + (extra_ecus or []),
    }


def bundle_bytes(hardware_id: str = HW, version: str = "1.1.0", counter: int = 2) -> bytes:
    return build_bundle(sample_image(hardware_id, version, size=4096), hardware_id, version, counter).data


async def upload(
    client: httpx.AsyncClient,
    data: bytes | None = None,
    *,
    hardware_id: str = HW,
    version: str = "1.1.0",
    counter: int = 2,
) -> httpx.Response:
    payload = bundle_bytes(hardware_id, version, counter) if data is None else data
    return await client.post(
        "/api/v1/releases",
        files={"file": ("fix.otab", payload, "application/octet-stream")},
        data={"hardware_id": hardware_id, "version": version, "release_counter": str(counter)},
    )


# Every recall carries an owner notice with a person to call (ota_server.services.owner_notices).
OWNER_NOTICE: dict[str, Any] = {
    "purpose": "Brake assist may disengage; this update fixes it",
    "what_changes": "Brake assist stays engaged under hard braking",
    "expected_minutes": 20,
    "unavailable_functions": ["driving"],
    "contact": {
        "name": "Dana Smith",
        "role": "Recall coordinator",
        "phone": "+1 555 0100",
        "email": "recalls@example.com",
    },
}


def recall_body(release_id: int, number: str = "24V-123", **population: Any) -> dict[str, Any]:
    return {
        "campaign_number": number,
        "title": "Brake assist software",
        "defect": "Brake assist may disengage",
        "safety_risk": "Longer stopping distance",
        "remedy": "Update brake controller software",
        "release_id": release_id,
        "population": population,
        # Campaign mechanics tests launch at once; the two-person path has its own tests.
        "safety_recall": False,
        # ... and their cars install without an owner's consent (test_rollout covers consent).
        "requires_consent": False,
        "owner_notice": OWNER_NOTICE,
    }


async def launched(client: httpx.AsyncClient, vins: list[str], **population: Any) -> dict[str, Any]:
    """Register ``vins``, upload a release, file and launch a recall; return the campaign."""
    resp = await client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in vins]})
    assert resp.status_code == 201, resp.text
    await provision(client, vins)
    release = await upload(client)
    assert release.status_code == 201, release.text
    recall = await client.post("/api/v1/recalls", json=recall_body(release.json()["id"], **population))
    assert recall.status_code == 201, recall.text
    campaign = await client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert campaign.status_code == 201, campaign.text
    body: dict[str, Any] = campaign.json()
    return body


async def provision(client: httpx.AsyncClient, vins: list[str]) -> None:
    """Issue report keys (no certificates) and keep them in :data:`REPORT_KEYS` for :func:`report`."""
    resp = await client.post("/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": vins})
    assert resp.status_code == 200, resp.text
    for identity in resp.json()["identities"]:
        REPORT_KEYS[identity["vin"]] = load_report_signer(identity["report_private_key"].encode())


def report(
    campaign_id: int,
    vin_: str,
    nonce: str,
    state: ReportState,
    *,
    attempt: int = 1,
    reason: FailureReason | None = None,
    installed_version: str | None = None,
    health_ok: bool | None = None,
    signer: CryptoSigner | None = None,
    deferrals: int = 0,
    detail: str = "",
) -> tuple[str, bytes]:
    """A status report as the car would send it, signed with ``signer`` or the VIN's provisioned key."""
    message = StatusReport(
        campaign_id=campaign_id,
        vin=vin_,
        nonce=nonce,
        attempt=attempt,
        deferrals=deferrals,
        state=state,
        reason=reason,
        detail=detail,
        installed_version=installed_version,
        health_ok=health_ok,
        sent_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    key = signer or REPORT_KEYS.get(vin_)
    return topics.status_topic(vin_), encode(message if key is None else sign_report(message, key))


def remedied(campaign_id: int, vin_: str, nonce: str, version: str = "1.1.0") -> tuple[str, bytes]:
    return report(campaign_id, vin_, nonce, ReportState.REMEDIED, installed_version=version, health_ok=True)


def verify(delegator: Metadata[Root], role: str, metadata: Metadata[Any]) -> None:
    """Raise unless ``metadata`` carries enough valid signatures for ``role`` under ``delegator``."""
    delegator.signed.verify_delegate(role, metadata.signed_bytes, metadata.signatures)
