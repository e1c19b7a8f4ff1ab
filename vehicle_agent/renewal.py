"""Certificate renewal: a car lives longer than its MQTT client certificate.

At start and then daily (``[renewal]``), the agent reads its certificate's end; once
fewer than ``renew_before_days`` remain it makes a new key, asks the server
(``POST /api/v1/vehicles/{vin}/certificate/renew``) with a CSR signed by its *current*
key, and installs the answer. The server revokes the old certificate as it issues the
new one, so the install must survive a crash at any point:

1. the new key goes to ``<key>.next`` before the request (a lost answer is asked again
   with the same key; the server answers a repeated renewal with the same certificate);
2. the answer goes to ``<cert>.next``, then replaces the certificate, then the key
   replaces the key. :func:`recover` finishes whatever step a crash interrupted.

The link's TLS context is reloaded in place, so the next connection presents the new
certificate without a restart. The daily look at the certificate's end uses the ``ssl``
module; ``cryptography`` is loaded only when a renewal is due (an idle car stays lean).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_bundles.provisioning import write_file
from vehicle_agent.config import AgentConfig
from vehicle_agent.errors import AgentError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)

# (url, JSON body) -> the server's JSON answer; raises on a transport failure or an error status.
Post = Callable[[str, Mapping[str, str]], Awaitable[Mapping[str, Any]]]
Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[Any]]
RETRY_AFTER_FAILURE_S = 3600.0


class RenewalFailed(AgentError):
    """The server refused or the answer does not fit the request; tried again later."""


def _next(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def not_after(cert: Path) -> datetime:
    """The certificate's end, read with the ``ssl`` module (no ``cryptography`` in an idle car)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is not None:
        return datetime.fromtimestamp(ssl.cert_time_to_seconds(decode(str(cert))["notAfter"]), UTC)
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RenewalFailed("the client key is not an EC key")
    return key


def renewal_request(
    vin: str, new_key: ec.EllipticCurvePrivateKey, current_key_pem: bytes, current_cert_pem: bytes
) -> dict[str, str]:
    """The request body: a CSR for ``new_key`` and the current key's signature over its DER bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, vin)]))
        .sign(new_key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    signature = _private_key(current_key_pem).sign(der, ec.ECDSA(hashes.SHA256()))
    return {
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "certificate": current_cert_pem.decode(),
        "signature": base64.b64encode(signature).decode(),
    }


def _same_key(cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> bool:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_pem).public_key() == key.public_key()


def recover(cert_path: Path, key_path: Path) -> None:
    """Finish an install a crash interrupted (see the module's steps); a pending key is left for the next try."""
    key_next, cert_next = _next(key_path), _next(cert_path)
    if not key_next.exists():
        cert_next.unlink(missing_ok=True)
        return
    key = _private_key(key_next.read_bytes())
    if cert_next.exists():
        if _same_key(cert_next.read_bytes(), key):
            os.replace(cert_next, cert_path)
        else:
            cert_next.unlink()
    if _same_key(cert_path.read_bytes(), key):
        os.replace(key_next, key_path)


def install(cert_path: Path, key_path: Path, cert_pem: bytes) -> None:
    """Put the new certificate in place, then its key (already waiting in ``<key>.next``)."""
    write_file(_next(cert_path), cert_pem)
    os.replace(_next(cert_path), cert_path)
    os.replace(_next(key_path), key_path)


class CertificateRenewer:
    """Renews ``config.tls_cert`` before it expires, on the injected clock."""

    def __init__(
        self,
        config: AgentConfig,
        post: Post,
        *,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if config.tls_cert is None or config.tls_key is None:
            raise ValueError("no client certificate to renew")
        self._config = config
        self._cert, self._key = config.tls_cert, config.tls_key
        self._post = post
        self._clock = clock
        self._sleep = sleep
        self._tls_context = tls_context
        options = config.renewal
        self._margin = timedelta(days=options.renew_before_days)
        self._interval = options.check_interval
        server = options.server_url or config.repo_url.rstrip("/").removesuffix("/repo")
        self.url = f"{server.rstrip('/')}/api/v1/vehicles/{config.vin}/certificate/renew"

    def not_after(self) -> datetime:
        return not_after(self._cert)

    def due(self) -> bool:
        return self.not_after() - self._clock() < self._margin

    async def check(self) -> bool:
        """Renew if due; True when a new certificate was installed."""
        if _next(self._key).exists():
            recover(self._cert, self._key)
        if not self.due():
            return False
        from cryptography.hazmat.primitives.asymmetric import ec

        key_next = _next(self._key)
        if key_next.exists():  # an earlier try whose answer never came: ask again for the same key
            new_key = _private_key(key_next.read_bytes())
        else:
            new_key = ec.generate_private_key(ec.SECP256R1())
            write_file(key_next, _key_pem(new_key), private=True)
        body = renewal_request(self._config.vin, new_key, self._key.read_bytes(), self._cert.read_bytes())
        answer = await self._post(self.url, body)
        cert_pem = str(answer.get("client_certificate", "")).encode()
        try:
            fits = _same_key(cert_pem, new_key)
        except ValueError as exc:
            raise RenewalFailed(f"the renewal answer holds no certificate: {exc}") from exc
        if not fits:
            raise RenewalFailed("the renewed certificate is not for the key this car sent")
        install(self._cert, self._key, cert_pem)
        if self._tls_context is not None:
            self._tls_context.load_cert_chain(self._cert, self._key)
        log.info("%s: client certificate renewed, valid until %s", self._config.vin, self.not_after().isoformat())
        return True

    async def run(self) -> None:
        """Check at start and every ``check_interval``; after a failure, again within the hour."""
        while True:
            delay = self._interval
            try:
                await self.check()
            except Exception as exc:  # the server is unreachable or refused: the car keeps running
                log.warning("%s: certificate renewal failed (%s); trying again later", self._config.vin, exc)
                delay = min(self._interval, RETRY_AFTER_FAILURE_S)
            await self._sleep(delay)


async def http_post(url: str, body: Mapping[str, str]) -> Mapping[str, Any]:
    """The real :data:`Post` (httpx, imported only when a renewal is due)."""
    import httpx

    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(url, json=dict(body))
    if response.status_code != 200:
        raise RenewalFailed(f"{url} -> {response.status_code}: {response.text[:300]}")
    answer: Mapping[str, Any] = response.json()
    return answer
