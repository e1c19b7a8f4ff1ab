"""The fleet operator's side of the REST API, as the simulator and the demo drive it."""

from __future__ import annotations

import time
from typing import Any

import httpx

from simulator.errors import ServerError

API = "/api/v1"
RATE_LIMIT_RETRIES = 20


class OperatorClient:
    """Thin synchronous client; every non-2xx answer becomes a :class:`ServerError` with its detail.

    ``token`` is an API token (``Authorization: Bearer``); a 429 is retried after the
    server's ``Retry-After``, as a well-behaved client does.
    """

    def __init__(self, base_url: str, *, token: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for _ in range(RATE_LIMIT_RETRIES):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise ServerError(f"{method} {self.base_url}{path}: {exc}") from exc
            if response.status_code != 429:
                break
            time.sleep(float(response.headers.get("retry-after", "1")))
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServerError(f"{method} {path} -> {response.status_code}: {detail}")
        return response.json()

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/healthz")
        return result

    def register_vehicles(self, vehicles: list[dict[str, Any]]) -> int:
        created: int = self._call("POST", f"{API}/vehicles/batch", json={"vehicles": vehicles})["created"]
        return created

    def upload_release(self, bundle: bytes, hardware_id: str, version: str, release_counter: int) -> dict[str, Any]:
        form = {"hardware_id": hardware_id, "version": version, "release_counter": str(release_counter)}
        files = {"file": (f"{hardware_id}-{version}.otab", bundle, "application/octet-stream")}
        result: dict[str, Any] = self._call("POST", f"{API}/releases", data=form, files=files)
        return result

    def create_recall(self, recall: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"{API}/recalls", json=recall)
        return result

    def launch(self, recall_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"{API}/recalls/{recall_id}/launch")
        return result

    def approve(self, recall_id: int) -> dict[str, Any]:
        """Approve a safety recall's requested launch (needs an approver token of another person)."""
        result: dict[str, Any] = self._call("POST", f"{API}/recalls/{recall_id}/approve")
        return result

    def recall(self, recall_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/recalls/{recall_id}")
        return result

    def create_token(self, name: str, role: str) -> str:
        """A new token for ``name`` (admin only); returns the secret."""
        token: str = self._call("POST", f"{API}/tokens", json={"name": name, "role": role})["token"]
        return token

    def progress(self, campaign_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/campaigns/{campaign_id}/progress")
        return result

    def agent_config(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/vehicles/{vin}/agent-config")
        return result

    def provision(self, vins: list[str], *, certificate: bool) -> list[dict[str, Any]]:
        """Issue the cars' identities (report keys, optionally client certificates); private parts come only here."""
        body = {"vins": vins}
        params = {"certificate": "true" if certificate else "false"}
        result: list[dict[str, Any]] = self._call("POST", f"{API}/vehicles/provision", json=body, params=params)[
            "identities"
        ]
        return result

    def vehicle_status(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/vehicles/{vin}/status")
        return result
