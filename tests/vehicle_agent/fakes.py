"""An in-memory Image repository and Director (simulator.signed_repo), for the agent's tests.

Served through :class:`vehicle_agent.transport.MemoryTransport`, so the agent runs its
real python-tuf verification against it. Attacks are staged by publishing with the
wrong keys or dates, or by swapping the bytes the transport serves.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from firmware_bundles.bundle import BuiltBundle
from firmware_bundles.messages import CampaignNotice, CampaignWithdrawal
from firmware_bundles.uptane import RoleSigners
from firmware_bundles.vin import make_vin
from simulator.signed_repo import SignedRepositories
from vehicle_agent.config import AgentConfig, EcuConfig
from vehicle_agent.transport import MemoryTransport

REPO = "http://repo.test/repo"
HW = "bcm-2024"
SERIAL = "ECU-0001"
OLD = "1.0"
VIN = make_vin("1HG", "CM826", "R", "A", 1)
OTHER_VIN = make_vin("1HG", "CM826", "R", "A", 2)


class FakeServer(SignedRepositories):
    """Both repositories for a fleet (:class:`simulator.signed_repo.SignedRepositories`), served
    through a :class:`MemoryTransport`; the Director publishes per VIN."""

    def __init__(self) -> None:
        self.transport = MemoryTransport()
        super().__init__(REPO, (VIN, OTHER_VIN), files=self.transport.files)

    @property
    def files(self) -> dict[str, Any]:
        """The files the current transport serves (a test may swap the transport for another)."""
        return self.transport.files

    @files.setter
    def files(self, value: dict[str, Any]) -> None:
        self.transport.files = value

    def release(
        self,
        version: str,
        counter: int,
        *,
        hardware_id: str = HW,
        bundle: BuiltBundle | None = None,
        image_bytes: int = 64 * 1024,
    ) -> TargetFile:
        """Release a bundle (by default the genuine one) and re-sign the Image repository."""
        return super().release(version, counter, hardware_id=hardware_id, bundle=bundle, image_bytes=image_bytes)

    def assign(
        self,
        targets: Mapping[str, TargetFile],
        *,
        vin: str = VIN,
        signed_vin: str | None = None,
        signers: RoleSigners | None = None,
        now: datetime | None = None,
        ecu_failure_policy: str | None = None,
        consent: Mapping[str, object] | None = None,
        maintenance_window: Mapping[str, object] | None = None,
    ) -> dict[str, bytes]:
        return super().assign(
            targets,
            vin=vin,
            signed_vin=signed_vin,
            signers=signers,
            now=now,
            ecu_failure_policy=ecu_failure_policy,
            consent=consent,
            maintenance_window=maintenance_window,
        )

    def serve_director(self, published: Mapping[str, bytes], vin: str = VIN) -> None:
        super().serve_director(published, vin)

    # -- cars --------------------------------------------------------------------------

    def agent_config(self, state_dir: Path, *, vin: str = VIN) -> AgentConfig:
        return AgentConfig(
            vin=vin,
            ecus=(EcuConfig(SERIAL, HW, OLD),),
            mqtt_url="mqtt://broker.test:1883",
            repo_url=REPO,
            state_dir=state_dir,
            image_root=self.image_root,
            director_root=self.director_root,
        )

    def agent_config_doc(self, vin: str = VIN) -> dict[str, object]:
        """What ``GET /api/v1/vehicles/{vin}/agent-config`` returns."""
        return {
            "vin": vin,
            "ecus": [{"serial": SERIAL, "hardware_id": HW, "installed_version": OLD}],
            "mqtt_url": "mqtt://broker.test:1883",
            "repo_url": REPO,
            "image_root": self.image_root.decode(),
            "director_root": self.director_root.decode(),
        }

    def notice(
        self, campaign_id: int = 1, *, vin: str = VIN, nonce: str | None = None, **fields: Any
    ) -> CampaignNotice:
        """``fields``: e.g. ``preconditions``, ``owner_notice``, ``requires_consent``, ``safety_recall``."""
        return CampaignNotice(
            campaign_id=campaign_id,
            vin=vin,
            nonce=nonce or secrets.token_urlsafe(16),
            recall_number="24V-123",
            title="Brake controller software",
            repo_url="http://ignored.test/repo",
            issued_at=self.now,
            **fields,
        )

    def withdrawal(self, notice: CampaignNotice, **fields: Any) -> CampaignWithdrawal:
        body: dict[str, Any] = {
            "campaign_id": notice.campaign_id,
            "vin": notice.vin,
            "nonce": notice.nonce,
            "issued_at": self.now,
        }
        return CampaignWithdrawal(**{**body, **fields})
