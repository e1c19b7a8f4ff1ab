"""The offline side of ``ota releases sign``: sign the server's pending targets with the targets key.

Runs on the machine holding the offline directory; it talks to the server only
over the API. The payload is parsed and signed with securesystemslib through
``tuf.api.metadata`` (canonical JSON by tuf's serializer), and only the
signatures travel back, with the sha256 of the exact bytes signed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root, Signature, Targets

from firmware_bundles import repo_paths
from ota_server.signing.keys import Keyring

PENDING_URL = "/api/v1/releases/pending-targets"


class OfflineSigningError(Exception):
    """The pending targets could not be fetched, signed or published; the message says why."""


@dataclass
class SignResult:
    targets_version: int
    release_ids: list[int]
    summary: list[str] = field(default_factory=list)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


def sign_targets(payload: bytes, keyring: Keyring, root: Root) -> list[Signature]:
    """Signatures over ``payload`` by every key of ``keyring`` that ``root`` trusts for targets."""
    try:
        md = Metadata[Targets].from_bytes(payload)
    except (RepositoryError, ValueError, TypeError) as exc:
        raise OfflineSigningError(f"the pending payload is not targets metadata: {exc}") from exc
    signers = keyring.for_role(root, "targets")
    if not signers:
        raise OfflineSigningError(
            f"no key in {', '.join(map(str, keyring.directories))} is trusted for targets by root v{root.version}"
        )
    return [md.sign(signer, append=True) for signer in signers]


def signature_body(payload: bytes, root: bytes, keyring: Keyring) -> dict[str, object]:
    """The JSON the server's signatures route takes: the payload's sha256 and the signatures."""
    signatures = sign_targets(payload, keyring, Metadata[Root].from_bytes(root).signed)
    return {
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "signatures": [{"keyid": s.keyid, "sig": s.signature} for s in signatures],
    }


def summary(payload: bytes) -> list[str]:
    """What is being signed, one line per target, for the person holding the key."""
    signed = Metadata[Targets].from_bytes(payload).signed
    lines = [f"targets v{signed.version}, expires {signed.expires.isoformat()}:"]
    for path, target in sorted(signed.targets.items()):
        counter = target.custom.get("release_counter") if isinstance(target.custom, dict) else None
        lines.append(f"  {path}  {target.length} bytes  sha256 {target.hashes.get('sha256')}  counter {counter}")
    return lines


def sign_pending(client: httpx.Client, offline_dir: Path, passphrase: bytes | None) -> SignResult:
    """Fetch, sign and post; raise :class:`OfflineSigningError` with the server's reason on refusal."""
    response = client.get(PENDING_URL)
    if response.status_code != 200:
        raise OfflineSigningError(f"cannot fetch the pending targets ({response.status_code}): {_detail(response)}")
    payload = response.content
    root_response = client.get("/repo/" + repo_paths.IMAGE_METADATA + "root.json")
    if root_response.status_code != 200:
        raise OfflineSigningError(f"cannot fetch the Image root ({root_response.status_code})")
    body = signature_body(payload, root_response.content, Keyring([offline_dir], passphrase))
    posted = client.post(PENDING_URL + "/signatures", json=body)
    if posted.status_code != 200:
        raise OfflineSigningError(f"the server refused the signature ({posted.status_code}): {_detail(posted)}")
    result = posted.json()
    return SignResult(int(result["targets_version"]), list(result["release_ids"]), summary(payload))
