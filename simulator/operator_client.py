"""The fleet operator's side of the REST API, as the simulator and the demo drive it.

The client itself is the server's own :class:`ota_server.cli.api_client.ApiClient` (one client
of the API, not two); here its errors become the simulator's :class:`ServerError`.
"""

from __future__ import annotations

from typing import Any

import httpx

from ota_server.cli.api_client import ApiClient, ApiError
from simulator.errors import ServerError, ServerUnavailable


class OperatorClient(ApiClient):
    """``ApiClient`` with a required token, raising :class:`ServerError` (same message) on any refusal.

    No answer, or a 5xx, is :class:`ServerUnavailable`: the server may be restarting.
    """

    def __init__(
        self, base_url: str, *, token: str, timeout: float = 60.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, transport=transport)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return super().call(method, path, **kwargs)
        except ApiError as exc:
            if exc.status is None or exc.status >= 500:
                raise ServerUnavailable(str(exc)) from exc
            raise ServerError(str(exc)) from exc
