"""Vehicle identity: a report-signing key pair and an MQTT client certificate per car.

The server generates both, stores only the public key (and the certificate's
serial), and hands the private parts out once. Provisioning again replaces the
key, so reports signed with the old one are rejected from then on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from firmware_bundles.errors import InvalidVin
from firmware_bundles.report_signing import generate_report_key, private_key_pem
from firmware_bundles.vin import validate_vin
from ota_server.db.models import Vehicle
from ota_server.errors import InvalidInput, NotFound
from ota_server.pki import CertificateAuthority
from ota_server.schemas import VehicleIdentity

_CHUNK = 500


def _normalised(raw_vins: Sequence[str]) -> list[str]:
    vins: list[str] = []
    for index, raw in enumerate(raw_vins):
        try:
            vins.append(validate_vin(raw.strip().upper()))
        except InvalidVin as exc:
            raise InvalidInput(f"vins[{index}]: invalid VIN {raw!r}: {exc}") from exc
    if len(set(vins)) != len(vins):
        raise InvalidInput("a VIN appears twice in the request")
    return vins


def _ids(session: Session, vins: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for start in range(0, len(vins), _CHUNK):
        chunk = vins[start : start + _CHUNK]
        rows = session.execute(select(Vehicle.vin, Vehicle.id).where(Vehicle.vin.in_(chunk)))
        ids.update((vin, id_) for vin, id_ in rows)
    missing = [vin for vin in vins if vin not in ids]
    if missing:
        raise NotFound(f"no vehicle with VIN {', '.join(missing[:10])}")
    return ids


def provision(
    session: Session, raw_vins: Sequence[str], now: datetime, ca: CertificateAuthority | None
) -> list[VehicleIdentity]:
    """Issue (or replace) the identity of every car in ``raw_vins``, all or nothing.

    Without ``ca`` no certificate is issued (enough for a plaintext broker, and fast).
    """
    vins = _normalised(raw_vins)
    ids = _ids(session, vins)
    identities: list[VehicleIdentity] = []
    rows: list[dict[str, object]] = []
    ca_pem = ca.cert_pem.decode() if ca is not None else None
    for vin in vins:
        signer = generate_report_key()
        key = signer.public_key
        cert = ca.issue_client(vin, now) if ca is not None else None
        rows.append(
            {
                "id": ids[vin],
                "report_keyid": key.keyid,
                "report_key": key.to_dict(),
                "certificate_serial": cert.serial if cert else None,
                "provisioned_at": now,
            }
        )
        identities.append(
            VehicleIdentity(
                vin=vin,
                keyid=key.keyid,
                report_public_key=key.to_dict(),
                report_private_key=private_key_pem(signer).decode(),
                ca_certificate=ca_pem,
                client_certificate=cert.cert_pem.decode() if cert else None,
                client_key=cert.key_pem.decode() if cert else None,
            )
        )
    session.execute(update(Vehicle), rows)
    session.commit()
    return identities
