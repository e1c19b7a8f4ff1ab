"""A small synchronous client of the REST API: the operator CLI's, and the simulator's (which plays the operator).

Every non-2xx answer (and every transport failure) becomes one :class:`ApiError` carrying the
HTTP status and the server's ``detail``. A 429 is retried after the server's ``Retry-After``.
"""

from __future__ import annotations

import time
from typing import Any, Self

import httpx

API = "/api/v1"
RATE_LIMIT_RETRIES = 10
PAGE_LIMIT = 1000  # the list contract's largest page


class ApiError(Exception):
    """The server refused (``status`` is its HTTP status) or could not be reached (``status`` is None)."""

    def __init__(self, method: str, path: str, status: int | None, detail: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        where = f"{method} {path}"
        super().__init__(f"{where} -> {status}: {detail}" if status is not None else f"{where}: {detail}")


class ApiClient:
    """``token`` goes in ``Authorization: Bearer``; ``transport`` lets tests talk to an in-process app."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer of a 2xx response; :class:`ApiError` otherwise."""
        response = self._send(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(method, path, response.status_code, f"answer is not JSON: {response.text[:200]}") from exc

    def download(self, path: str, **kwargs: Any) -> bytes:
        """The body of a 2xx answer to GET ``path`` as it came (a CSV or PDF file); :class:`ApiError` otherwise."""
        return self._send("GET", path, **kwargs).content

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response | None = None
        for _ in range(RATE_LIMIT_RETRIES):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise ApiError(method, f"{self.base_url}{path}", None, f"cannot reach the server: {exc}") from exc
            if response.status_code != 429:
                break
            time.sleep(min(30.0, float(response.headers.get("retry-after", "1"))))
        assert response is not None
        if response.status_code >= 400:
            raise ApiError(method, path, response.status_code, _detail(response))
        return response

    def every(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a list endpoint (``items``/``next_cursor``), following the cursor page by page."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {**(params or {}), "limit": PAGE_LIMIT, **({"cursor": cursor} if cursor else {})}
            page: dict[str, Any] = self.call("GET", path, params=query)
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/healthz")
        return result

    def create_token(self, name: str, role: str) -> str:
        """A new token for ``name`` (admin only); returns the secret, shown only here."""
        token: str = self.new_token(name, role)["token"]
        return token

    # --- tokens and the audit log (admin only) ---
    def new_token(self, name: str, role: str) -> dict[str, Any]:
        """The new token's record with its secret (``token``), shown only here."""
        result: dict[str, Any] = self.call("POST", f"{API}/tokens", json={"name": name, "role": role})
        return result

    def tokens(self, **filters: Any) -> list[dict[str, Any]]:
        return self.every(f"{API}/tokens", filters)

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("DELETE", f"{API}/tokens/{token_id}")
        return result

    def verify_audit(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"{API}/audit/verify")
        return result

    # --- regulator reports (documents about a recall, not cars' status reports) ---
    def regulator_report(self, recall_id: int, kind: str, fmt: str, *, quarter: str | None, week: str | None) -> bytes:
        """One recall's report file, as the server rendered it (CSV, JSON or PDF)."""
        params = {"format": fmt, **({"quarter": quarter} if quarter else {}), **({"week": week} if week else {})}
        return self.download(f"{API}/reports/recalls/{recall_id}/{kind}", params=params)

    # --- releases ---
    def upload_release(self, bundle: bytes, hardware_id: str, version: str, release_counter: int) -> dict[str, Any]:
        form = {"hardware_id": hardware_id, "version": version, "release_counter": str(release_counter)}
        files = {"file": (f"{hardware_id}-{version}.otab", bundle, "application/octet-stream")}
        result: dict[str, Any] = self.call("POST", f"{API}/releases", data=form, files=files)
        return result

    def releases(self, **filters: Any) -> list[dict[str, Any]]:
        return self.every(f"{API}/releases", filters)

    def retire_release(self, release_id: int, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"{API}/releases/{release_id}/retire", json={"reason": reason})
        return result

    # --- vehicles ---
    def register_vehicles(self, vehicles: list[dict[str, Any]]) -> int:
        created: int = self.call("POST", f"{API}/vehicles/batch", json={"vehicles": vehicles})["created"]
        return created

    def agent_config(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"{API}/vehicles/{vin}/agent-config")
        return result

    def provision(self, vins: list[str], *, certificate: bool) -> list[dict[str, Any]]:
        """Issue the cars' identities (report keys, optionally client certificates); private parts come only here."""
        body = {"vins": vins}
        params = {"certificate": "true" if certificate else "false"}
        result: list[dict[str, Any]] = self.call("POST", f"{API}/vehicles/provision", json=body, params=params)[
            "identities"
        ]
        return result

    def provision_vehicle(self, vin: str, *, certificate: bool) -> dict[str, Any]:
        """One car's config bundle contents (its new report key, optionally a client certificate)."""
        params = {"certificate": "true" if certificate else "false"}
        result: dict[str, Any] = self.call("POST", f"{API}/vehicles/{vin}/provision", params=params)
        return result

    def revoke_certificate(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"{API}/vehicles/{vin}/certificate/revoke")
        return result

    def vehicle_status(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"{API}/vehicles/{vin}/status")
        return result

    def vehicles_page(self, filters: dict[str, Any], cursor: str | None, limit: int) -> dict[str, Any]:
        """One page of the fleet (``items``, ``next_cursor``); ``filters`` are the list's query parameters."""
        params = {**filters, "limit": limit, **({"cursor": cursor} if cursor else {})}
        result: dict[str, Any] = self.call("GET", f"{API}/vehicles", params=params)
        return result

    def vehicle(self, vin: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"{API}/vehicles/{vin}")
        return result

    def update_vehicle(self, vin: str, changes: dict[str, Any]) -> dict[str, Any]:
        """PATCH: only time_zone, market and owner_contact may change (None clears one)."""
        result: dict[str, Any] = self.call("PATCH", f"{API}/vehicles/{vin}", json=changes)
        return result

    def decommission(self, vin: str, reason: str, detail: str | None) -> dict[str, Any]:
        body = {"reason": reason, **({"detail": detail} if detail else {})}
        result: dict[str, Any] = self.call("POST", f"{API}/vehicles/{vin}/decommission", json=body)
        return result

    # --- recalls ---
    def create_recall(self, recall: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"{API}/recalls", json=recall)
        return result

    def recalls(self, **filters: Any) -> list[dict[str, Any]]:
        return self.every(f"{API}/recalls", filters)

    def recall(self, recall_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"{API}/recalls/{recall_id}")
        return result

    def launch(self, recall_id: int) -> dict[str, Any]:
        """A campaign (launched at once) or a launch request awaiting approval (a safety recall)."""
        result: dict[str, Any] = self.call("POST", f"{API}/recalls/{recall_id}/launch")
        return result

    def approve(self, recall_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", f"{API}/recalls/{recall_id}/approve")
        return result

    # --- campaigns ---
    def campaigns(self, **filters: Any) -> list[dict[str, Any]]:
        return self.every(f"{API}/campaigns", filters)

    def campaign_vehicles(self, campaign_id: int, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Every car of the campaign matching ``filters`` (state, reason, wave, ecu, vin, sort)."""
        return self.every(f"{API}/campaigns/{campaign_id}/vehicles", filters)

    def campaign_vehicles_csv(self, campaign_id: int, filters: dict[str, Any]) -> bytes:
        return self.download(f"{API}/campaigns/{campaign_id}/vehicles", params={**filters, "format": "csv"})

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"{API}/campaigns/{campaign_id}")
        return result

    def progress(self, campaign_id: int, *, ecus: bool = True) -> dict[str, Any]:
        """``ecus`` False: without the per-ECU breakdown (cheaper; for a poller reading the counts)."""
        params = None if ecus else {"ecus": "false"}
        result: dict[str, Any] = self.call("GET", f"{API}/campaigns/{campaign_id}/progress", params=params)
        return result

    def control(self, campaign_id: int, action: str, reason: str = "") -> dict[str, Any]:
        """``action``: pause, resume or cancel (with a reason), or retry-failed."""
        body = None if action == "retry-failed" else {"reason": reason}
        result: dict[str, Any] = self.call("POST", f"{API}/campaigns/{campaign_id}/{action}", json=body)
        return result

    def roll_back(self, campaign_id: int, reach: str | None = None, reason: str = "") -> dict[str, Any]:
        """Start a paused campaign's rollback by hand; the rollback campaign (``reach``: wave or campaign)."""
        body: dict[str, Any] = {"reason": reason} | ({"reach": reach} if reach else {})
        result: dict[str, Any] = self.call("POST", f"{API}/campaigns/{campaign_id}/rollback", json=body)
        return result


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]
