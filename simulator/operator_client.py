"""The fleet operator's side of the REST API, as the simulator and the demo drive it."""

from __future__ import annotations

from typing import Any

import httpx

from simulator.errors import ServerError

API = "/api/v1"


class OperatorClient:
    """Thin synchronous client; every non-2xx answer becomes a :class:`ServerError` with its detail."""

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(f"{method} {self.base_url}{path}: {exc}") from exc
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

    def progress(self, campaign_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/campaigns/{campaign_id}/progress")
        return result

    def agent_config(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/vehicles/{vin}/agent-config")
        return result

    def vehicle_status(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"{API}/vehicles/{vin}/status")
        return result
