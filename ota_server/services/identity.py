"""Vehicle identity: a report-signing key pair and an MQTT client certificate per car.

The server generates both, stores only the public key (and the certificate's
serial), and hands the private parts out once. Provisioning again replaces the
key, so reports signed with the old one are rejected from then on, and revokes the
old certificate: every certificate issued is kept (``vehicle_certificates``) and the
revoked ones go into the CA's revocation list, rewritten after each revocation where
the broker's ``crlfile`` points. A car renews its own certificate (:func:`renew`)
before it expires, proving it holds the current one's key.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session

from firmware_bundles.errors import InvalidVin
from firmware_bundles.report_signing import generate_report_key, private_key_pem
from firmware_bundles.vin import validate_vin
from ota_server.db.models import Vehicle, VehicleCertificate
from ota_server.errors import Forbidden, InvalidInput, NotFound
from ota_server.infra.pki import CertificateAuthority, write_file
from ota_server.schemas import CertificateRenewal, CertificatesRevoked, RenewedCertificate, VehicleIdentity

_CHUNK = 500


def _normalised(raw_vins: Sequence[str]) -> list[str]:
    vins: list[str] = []
    for index, raw in enumerate(raw_vins):
        try:
            vins.append(validate_vin(raw))
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


@dataclass(frozen=True)
class Revocations:
    """Where the revocation list goes, and the CA that signs it (loaded only once something is revoked)."""

    crl_file: Path
    authority: Callable[[datetime], CertificateAuthority]


def provision(
    session: Session,
    raw_vins: Sequence[str],
    now: datetime,
    ca: CertificateAuthority | None,
    revocations: Revocations | None = None,
) -> list[VehicleIdentity]:
    """Issue (or replace) the identity of every car in ``raw_vins``, all or nothing.

    Without ``ca`` no certificate is issued (enough for a plaintext broker, and fast).
    Each car's previous certificates are revoked either way: the old bundle is no
    identity any more.
    """
    vins = _normalised(raw_vins)
    ids = _ids(session, vins)
    identities: list[VehicleIdentity] = []
    rows: list[dict[str, object]] = []
    issued: list[dict[str, object]] = []
    ca_pem = ca.cert_pem.decode() if ca is not None else None
    for vin in vins:
        signer = generate_report_key()
        key = signer.public_key
        cert = ca.issue_client(vin, now) if ca is not None else None
        if cert is not None:
            issued.append(_issued_row(ids[vin], cert.serial, now, cert.not_after, cert.cert_pem))
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
    revoked = _revoke_current(session, list(ids.values()), now)
    if issued:
        session.execute(insert(VehicleCertificate), issued)
    session.commit()
    if revoked and revocations is not None:
        publish_crl(session, revocations, now)
    return identities


def revoke(session: Session, raw_vin: str, now: datetime, revocations: Revocations) -> CertificatesRevoked:
    """Revoke every certificate ``raw_vin`` holds (a stolen or retired car); provisioning gives it a new one."""
    (vin,) = _normalised([raw_vin])
    vehicle_id = _ids(session, [vin])[vin]
    revoked = _revoke_current(session, [vehicle_id], now)
    session.execute(update(Vehicle).where(Vehicle.id == vehicle_id).values(certificate_serial=None))
    session.commit()
    publish_crl(session, revocations, now)
    return CertificatesRevoked(vin=vin, revoked=revoked)


def renew(
    session: Session,
    raw_vin: str,
    request: CertificateRenewal,
    now: datetime,
    revocations: Revocations,
) -> RenewedCertificate:
    """A new certificate for the key in ``request.csr``; the current one (which signed it) is revoked.

    Only a certificate our CA issued to this VIN authorises a renewal, signed by its key,
    while unexpired and unrevoked. The one exception makes a lost answer harmless: the
    request that renewed a certificate, asked again for the same new key, gets the same
    answer (nothing new is issued). Any other request signed by a replaced certificate fails.
    """
    (vin,) = _normalised([raw_vin])
    vehicle_id = _ids(session, [vin])[vin]
    ca = revocations.authority(now)
    presented = _load_cert(request.certificate)
    csr = _load_csr(request.csr)
    row = _issued_to(session, ca, vehicle_id, vin, presented)
    _check_proof(presented, csr, request.signature)
    public_key = _check_csr(csr, vin)
    if row.revoked_at is not None:
        return _answered_before(session, ca, vin, row, public_key)
    if presented.not_valid_after_utc <= now:
        expired = presented.not_valid_after_utc.isoformat()
        raise Forbidden(f"{vin}'s certificate expired at {expired}: provision it again")
    pem = ca.issue_client_for(vin, public_key, now)
    new = x509.load_pem_x509_certificate(pem)
    serial = format(new.serial_number, "x")
    _revoke_current(session, [vehicle_id], now)
    session.execute(insert(VehicleCertificate), [_issued_row(vehicle_id, serial, now, new.not_valid_after_utc, pem)])
    session.execute(update(Vehicle).where(Vehicle.id == vehicle_id).values(certificate_serial=serial))
    session.commit()
    publish_crl(session, revocations, now)
    return RenewedCertificate(
        vin=vin, client_certificate=pem.decode(), ca_certificate=ca.cert_pem.decode(), not_after=new.not_valid_after_utc
    )


def publish_crl(session: Session, revocations: Revocations, now: datetime) -> Path:
    """Write the CA's revocation list (every revoked certificate not yet expired) where the broker reads it.

    Built from the database under a file lock, so two writers on one machine never
    leave an older list in place of a newer one. The broker reads it at start and on
    SIGHUP (README: "Revoking a car's certificate").
    """
    path = revocations.crl_file
    path.parent.mkdir(parents=True, exist_ok=True)
    ca = revocations.authority(now)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = session.execute(
            select(VehicleCertificate.serial, VehicleCertificate.revoked_at)
            .where(VehicleCertificate.revoked_at.is_not(None))
            .where(or_(VehicleCertificate.not_after.is_(None), VehicleCertificate.not_after > now))
            .order_by(VehicleCertificate.id)
        ).all()
        session.rollback()  # end the read transaction; nothing was written
        write_file(path, ca.crl([(serial, when) for serial, when in rows if when is not None], now), 0o644)
    return path


def _issued_row(vehicle_id: int, serial: str, now: datetime, not_after: datetime, pem: bytes) -> dict[str, object]:
    return {
        "vehicle_id": vehicle_id,
        "serial": serial,
        "issued_at": now,
        "not_after": not_after,
        "certificate": pem.decode(),
    }


def _revoke_current(session: Session, vehicle_ids: Collection[int], now: datetime) -> list[str]:
    """Mark every unrevoked certificate of these cars revoked; return their serials."""
    revoked: list[str] = []
    ids = list(vehicle_ids)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        revoked += session.scalars(
            update(VehicleCertificate)
            .where(VehicleCertificate.vehicle_id.in_(chunk), VehicleCertificate.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(VehicleCertificate.serial)
        ).all()
    return revoked


def _load_cert(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise InvalidInput(f"certificate: not a PEM certificate: {exc}") from exc


def _load_csr(pem: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise InvalidInput(f"csr: not a PEM certificate signing request: {exc}") from exc


def _issued_to(
    session: Session, ca: CertificateAuthority, vehicle_id: int, vin: str, cert: x509.Certificate
) -> VehicleCertificate:
    row = session.scalar(
        select(VehicleCertificate).where(
            VehicleCertificate.vehicle_id == vehicle_id, VehicleCertificate.serial == format(cert.serial_number, "x")
        )
    )
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if row is None or not ca.issued_this(cert) or [n.value for n in names] != [vin]:
        raise Forbidden(f"not a certificate issued to {vin}")
    return row


def _answered_before(
    session: Session, ca: CertificateAuthority, vin: str, row: VehicleCertificate, key: ec.EllipticCurvePublicKey
) -> RenewedCertificate:
    """The certificate ``row``'s renewal issued, if it is current and for ``key``; else the request is refused."""
    successor = session.scalar(
        select(VehicleCertificate).where(
            VehicleCertificate.vehicle_id == row.vehicle_id,
            VehicleCertificate.revoked_at.is_(None),
            VehicleCertificate.issued_at == row.revoked_at,
        )
    )
    if successor is not None and successor.certificate is not None:
        issued = x509.load_pem_x509_certificate(successor.certificate.encode())
        if issued.public_key() == key:
            return RenewedCertificate(
                vin=vin,
                client_certificate=successor.certificate,
                ca_certificate=ca.cert_pem.decode(),
                not_after=issued.not_valid_after_utc,
            )
    raise Forbidden(f"this certificate of {vin} was revoked (replaced or withdrawn)")


def _check_proof(cert: x509.Certificate, csr: x509.CertificateSigningRequest, signature: str) -> None:
    key = cert.public_key()
    try:
        raw = base64.b64decode(signature, validate=True)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(raw, csr.public_bytes(serialization.Encoding.DER), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error) as exc:
        raise Forbidden("the signature is not the current certificate's key over this request") from exc


def _check_csr(csr: x509.CertificateSigningRequest, vin: str) -> ec.EllipticCurvePublicKey:
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidInput("csr: the new key must be EC P-256")
    if not csr.is_signature_valid:
        raise InvalidInput("csr: its own signature does not verify")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [vin]:
        raise InvalidInput(f"csr: the subject's CN must be {vin}")
    return key
