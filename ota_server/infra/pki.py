"""The project's own certificate authority for MQTT over TLS.

One CA issues every certificate the broker sees: the broker's server certificate,
the server's client certificate (CN ``ota-server``) and one client certificate per
vehicle (CN = VIN). Mosquitto takes the CN as the user name and client id, so the
ACL patterns keyed on ``%u`` confine each car to its own topics.

Like the development signing keys, the CA key is made on first use and kept as an
unencrypted PEM under ``<data_dir>/ca/``, with a loud warning: fine for a demo,
wrong for production (keep the CA offline or in an HSM and issue from there).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ota_server.errors import NotReady

log = logging.getLogger(__name__)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SERVER_CLIENT_CN = "ota-server"
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=825)
# Leaves start a little in the past so a car whose clock lags a bit still accepts them.
BACKDATE = timedelta(hours=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM; the key is handed out once, never stored."""

    cert_pem: bytes
    key_pem: bytes
    serial: str

    @property
    def not_after(self) -> datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write with ``mode`` and rename into place so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """Issues ECDSA P-256 leaves (fast to make, accepted by every TLS stack Mosquitto links)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, now: datetime, name: str = "OTA recall service dev CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, directory: Path, now: datetime) -> CertificateAuthority:
        """The CA kept in ``directory``; made (with a warning) when the directory holds none."""
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except (OSError, ValueError) as exc:
                raise NotReady(f"cannot load the CA in {directory}: {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise NotReady(f"{key_path} is not an EC private key")
            return cls(key, cert)
        if cert_path.exists() or key_path.exists():
            raise NotReady(f"{directory} holds only half of the CA; restore it or remove the directory")
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls.create(now)
        write_file(key_path, _key_pem(ca._key), 0o600)
        write_file(cert_path, ca.cert_pem, 0o644)
        log.warning(
            "!!! GENERATED A DEVELOPMENT CERTIFICATE AUTHORITY in %s: unencrypted key on local disk. "
            "Do NOT use it for real vehicles; keep this directory to keep issued certificates valid. !!!",
            directory,
        )
        return ca

    def _leaf(
        self,
        common_name: str,
        now: datetime,
        usage: x509.ObjectIdentifier,
        names: Sequence[x509.GeneralName] = (),
        validity: timedelta = LEAF_VALIDITY,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign_leaf(common_name, key.public_key(), now, usage, names, validity)
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), format(cert.serial_number, "x"))

    def _sign_leaf(
        self,
        common_name: str,
        public_key: ec.EllipticCurvePublicKey,
        now: datetime,
        usage: x509.ObjectIdentifier,
        names: Sequence[x509.GeneralName] = (),
        validity: timedelta = LEAF_VALIDITY,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def issue_client(self, common_name: str, now: datetime) -> Issued:
        """A TLS client certificate; the broker takes ``common_name`` as user name and client id."""
        return self._leaf(common_name, now, ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_client_for(self, common_name: str, public_key: ec.EllipticCurvePublicKey, now: datetime) -> bytes:
        """A client certificate (PEM) for a key the car made itself (renewal): no private key travels."""
        cert = self._sign_leaf(common_name, public_key, now, ExtendedKeyUsageOID.CLIENT_AUTH)
        return cert.public_bytes(serialization.Encoding.PEM)

    def issued_this(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` carries this CA's signature (a certificate from anywhere else proves nothing)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def crl(self, revoked: Iterable[tuple[str, datetime]], now: datetime) -> bytes:
        """A CRL (PEM) listing each ``(hex serial, revoked at)``; valid until the CA itself expires.

        Mosquitto checks every client against it (``crlfile``). Its next update is far off on
        purpose: the broker never fetches a CRL, it is handed a new file, and a CRL past its
        next update would make OpenSSL refuse every car.
        """
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE)
            .next_update(self.cert.not_valid_after_utc)
        )
        for serial, when in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(when).build()
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def issue_server(self, hostnames: Sequence[str], now: datetime) -> Issued:
        """The broker's certificate, valid for each of ``hostnames`` (DNS names or IP addresses)."""
        if not hostnames:
            raise ValueError("a server certificate needs at least one host name")
        names: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._leaf(hostnames[0], now, ExtendedKeyUsageOID.SERVER_AUTH, names)


class LazyAuthority:
    """The CA of one data directory, loaded (or made) on first use, once per process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca: CertificateAuthority | None = None
        self._lock = threading.Lock()

    def get(self, now: datetime) -> CertificateAuthority:
        with self._lock:
            if self._ca is None:
                self._ca = CertificateAuthority.load_or_create(self.directory, now)
            return self._ca
