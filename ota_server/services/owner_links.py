"""Per-car owner-page links: ``<public_url>/owner/<token>``, one per car and campaign.

The token names the campaign and VIN and carries an HMAC of both under a server secret
(``<data_dir>/owner-link-secret``, made on first use), so it cannot be guessed or moved
to another car; the page's form nonce is an HMAC of the token and the images shown.
Replicas share the secret through the shared data directory (like the keys).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from ota_server.errors import NotFound
from ota_server.infra import secret_file

SECRET_FILE = "owner-link-secret"
_TOKEN = re.compile(r"^([1-9][0-9]{0,11})-([A-HJ-NPR-Z0-9]{17})-([0-9a-f]{32})$")


def load_secret(data_dir: Path) -> bytes:
    """The owner-link secret, made (owner-only readable) on first use."""
    return secret_file.load_or_create(data_dir / SECRET_FILE)


@dataclass(frozen=True)
class OwnerLinks:
    """Per-car owner-page links, and the checks of a token and a form nonce."""

    secret: bytes
    base_url: str

    def _mac(self, *parts: object) -> str:
        message = "|".join(str(p) for p in parts).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def token(self, vin: str, campaign_id: int) -> str:
        return f"{campaign_id}-{vin}-{self._mac('owner', campaign_id, vin)[:32]}"

    def url(self, vin: str, campaign_id: int) -> str:
        return f"{self.base_url.rstrip('/')}/owner/{self.token(vin, campaign_id)}"

    def parse(self, token: str) -> tuple[int, str]:
        """(campaign id, VIN) of a genuine token; NotFound otherwise (no hint which part is wrong)."""
        match = _TOKEN.match(token)
        if match is None or not hmac.compare_digest(self.token(match.group(2), int(match.group(1))), token):
            raise NotFound("no such owner page")
        return int(match.group(1)), match.group(2)

    def nonce(self, token: str, images: str) -> str:
        return self._mac("form", token, images)

    def nonce_ok(self, token: str, images: str, nonce: str) -> bool:
        return hmac.compare_digest(self.nonce(token, images), nonce)
