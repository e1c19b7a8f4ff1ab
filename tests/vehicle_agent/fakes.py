"""An in-memory Image repository and Director, signed with the contract helpers.

Served through :class:`vehicle_agent.transport.MemoryTransport`, so the agent runs its
real python-tuf verification against it. Attacks are staged by publishing with the
wrong keys or dates, or by swapping the bytes the transport serves.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from firmware_bundles import repo_paths
from firmware_bundles.bundle import BuiltBundle, build_bundle, sample_image
from firmware_bundles.messages import CampaignNotice, CampaignWithdrawal
from firmware_bundles.uptane import (
    Expiry,
    RepoVersions,
    RoleSigners,
    bundle_target_path,
    create_root,
    director_target,
    image_target,
    publish_targets,
)
from firmware_bundles.vin import make_vin
from vehicle_agent.config import AgentConfig, EcuConfig
from vehicle_agent.transport import MemoryTransport

REPO = "http://repo.test/repo"
HW = "bcm-2024"
SERIAL = "ECU-0001"
OLD = "1.0"
VIN = make_vin("1HG", "CM826", "R", "A", 1)
OTHER_VIN = make_vin("1HG", "CM826", "R", "A", 2)


class FakeServer:
    """Both repositories for a fleet; the Director publishes per VIN."""

    def __init__(self) -> None:
        self.transport = MemoryTransport()
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.image_signers = RoleSigners.generate()
        self.director_signers = RoleSigners.generate(single_online_key=True)
        self.image_root = create_root(self.image_signers, self.now + timedelta(days=365))
        self.director_root = create_root(self.director_signers, self.now + timedelta(days=365))
        self.image_targets: dict[str, TargetFile] = {}
        self.image_versions = RepoVersions()
        self.director_versions: dict[str, RepoVersions] = {}
        self.bundles: dict[str, BuiltBundle] = {}
        self.transport.files[repo_paths.image_metadata_url(REPO) + "1.root.json"] = self.image_root
        for vin in (VIN, OTHER_VIN):
            self.transport.files[repo_paths.director_metadata_url(REPO, vin) + "1.root.json"] = self.director_root
        self.publish_image()

    # -- Image repository ----------------------------------------------------------

    def release(
        self, version: str, counter: int, *, hardware_id: str = HW, bundle: BuiltBundle | None = None
    ) -> TargetFile:
        """Release a bundle (by default the genuine one) and re-sign the Image repository."""
        built = bundle or build_bundle(sample_image(hardware_id, version), hardware_id, version, counter)
        path = bundle_target_path(hardware_id, version)
        self.bundles[path] = built
        self.transport.files[repo_paths.targets_url(REPO) + path] = built.data
        target = image_target(path, built.length, built.sha256, hardware_id, version, counter)
        self.image_targets[path] = target
        self.publish_image()
        return target

    def publish_image(self, *, signers: RoleSigners | None = None, now: datetime | None = None) -> dict[str, bytes]:
        self.image_versions, files = publish_targets(
            self.image_targets, signers or self.image_signers, Expiry(), now or self.now, self.image_versions
        )
        self._serve(repo_paths.image_metadata_url(REPO), files)
        return files

    # -- Director ------------------------------------------------------------------

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
    ) -> dict[str, bytes]:
        """Publish Director targets for ``vin``: ECU serial to the image target it must install
        (``consent``: an owner-page answer signed into the same metadata)."""
        signed_vin = signed_vin or vin
        director = {
            t.path: director_target(t, signed_vin, serial, ecu_failure_policy=ecu_failure_policy)
            for serial, t in targets.items()
        }
        previous = self.director_versions.get(vin, RepoVersions())
        versions, files = publish_targets(
            director,
            signers or self.director_signers,
            Expiry(),
            now or self.now,
            previous,
            extra={"vin": signed_vin, **({"consent": dict(consent)} if consent is not None else {})},
        )
        self.director_versions[vin] = versions
        self._serve(repo_paths.director_metadata_url(REPO, vin), files)
        return files

    def serve_director(self, files: Mapping[str, bytes], vin: str = VIN) -> None:
        self._serve(repo_paths.director_metadata_url(REPO, vin), files)

    def _serve(self, base: str, files: Mapping[str, bytes]) -> None:
        for name, data in files.items():
            self.transport.files[base + name] = data

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
