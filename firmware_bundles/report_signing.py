"""Signing and verifying status reports with the vehicle's own key.

The signature covers the canonical JSON (securesystemslib's ``encode_canonical``)
of the report's JSON form without its ``signature`` field, so what is signed does
not depend on how the JSON was spaced or ordered on the wire; changing any field,
the nonce included, breaks it. Keys are ed25519 through securesystemslib.
"""

from __future__ import annotations

from typing import Any, TypeVar

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.signer import CryptoSigner, Key, Signature, Signer, SSlibKey

from firmware_bundles.canonical import canonical_bytes
from firmware_bundles.errors import UnverifiedReport
from firmware_bundles.messages import ReportBatch, ReportSignature, StatusReport, VersionManifest

# Every car message signed with the car's report key.
SignedMessage = TypeVar("SignedMessage", StatusReport, ReportBatch, VersionManifest)


def generate_report_key() -> CryptoSigner:
    """A fresh ed25519 key pair for one vehicle."""
    return CryptoSigner.generate_ed25519()


def private_key_pem(signer: CryptoSigner) -> bytes:
    """PKCS#8 PEM of the private key, as the agent keeps it on disk."""
    return signer.private_bytes


def load_report_signer(pem: bytes) -> CryptoSigner:
    """The signer for a PEM private key; raises ValueError when it is not one."""
    try:
        return CryptoSigner(load_pem_private_key(pem, password=None))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a usable private key: {exc}") from exc


def public_key(keyid: str, key: dict[str, Any]) -> SSlibKey:
    """Rebuild a stored public key (the server keeps ``key.to_dict()`` and the keyid)."""
    return SSlibKey.from_dict(keyid, dict(key))


def signed_bytes(report: StatusReport | ReportBatch | VersionManifest) -> bytes:
    """The bytes a signature covers: canonical JSON of the report minus its signature."""
    body = report.model_dump(mode="json", exclude_none=True, exclude={"signature"})
    return canonical_bytes(body)  # encode_canonical's bytes, on orjson where that is exact (most reports)


def sign_report(report: SignedMessage, signer: Signer) -> SignedMessage:
    """A copy of ``report`` (a status report, a report batch or a version manifest) carrying ``signer``'s signature."""
    signature = signer.sign(signed_bytes(report))
    return report.model_copy(update={"signature": ReportSignature(keyid=signature.keyid, sig=signature.signature)})


def verify_report(report: StatusReport | ReportBatch | VersionManifest, key: Key) -> None:
    """Raise :class:`UnverifiedReport` unless ``report`` is signed by ``key``."""
    if report.signature is None:
        raise UnverifiedReport("report is not signed")
    if report.signature.keyid != key.keyid:
        raise UnverifiedReport(f"signed by key {report.signature.keyid[:12]}…, expected {key.keyid[:12]}…")
    try:
        key.verify_signature(Signature(report.signature.keyid, report.signature.sig), signed_bytes(report))
    except (UnverifiedSignatureError, VerificationError) as exc:
        raise UnverifiedReport(f"signature does not verify: {exc}") from exc
