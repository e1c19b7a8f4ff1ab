"""An Image repository and a Director, signed in memory with the contract's helpers.

The one builder of signed Uptane metadata outside the server, for tests, benches and
simulated fleets: every file is held as URL -> bytes in :attr:`SignedRepositories.files`
(hand in a :class:`vehicle_agent.transport.MemoryTransport`'s ``files`` to serve them to
a real agent, or :meth:`SignedRepositories.write_under` to lay them out for an HTTP
server). It lives in the simulator, never in the agent's wheel: a car only reads
repositories, and the server signs its own with ``ota_server.signing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from firmware_bundles import repo_paths
from firmware_bundles.bundle import BuiltBundle, build_bundle, sample_image
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


class SignedRepositories:
    """Both repositories for a fleet: one Image repository, one Director chain per VIN.

    ``files`` (URL -> bytes) is filled in place, so a transport that serves that dict sees
    every publication at once. Attacks are staged by publishing with other keys or dates
    (``signers``, ``now``) or by replacing bytes in ``files``.
    """

    def __init__(
        self,
        repo_url: str,
        vins: Iterable[str] = (),
        *,
        files: dict[str, Any] | None = None,
        now: datetime | None = None,
        valid_for: timedelta = timedelta(days=365),
    ) -> None:
        self.repo_url = repo_url
        self.files: dict[str, Any] = files if files is not None else {}
        self.now = now or datetime.now(UTC).replace(microsecond=0)
        self.image_signers = RoleSigners.generate()
        self.director_signers = RoleSigners.generate(single_online_key=True)
        self.image_root = create_root(self.image_signers, self.now + valid_for)
        self.director_root = create_root(self.director_signers, self.now + valid_for)
        self.image_targets: dict[str, TargetFile] = {}
        self.image_versions = RepoVersions()
        self.director_versions: dict[str, RepoVersions] = {}
        self.bundles: dict[str, BuiltBundle] = {}
        self.files[repo_paths.image_metadata_url(repo_url) + "1.root.json"] = self.image_root
        for vin in vins:
            self.add_car(vin)
        self.publish_image()

    # -- Image repository ----------------------------------------------------------

    def release(
        self,
        version: str,
        counter: int,
        *,
        hardware_id: str,
        bundle: BuiltBundle | None = None,
        image_bytes: int = 64 * 1024,
    ) -> TargetFile:
        """Release a bundle (by default a genuine sample image of ``image_bytes``), serve it, re-sign."""
        built = bundle or build_bundle(
            sample_image(hardware_id, version, size=image_bytes), hardware_id, version, counter
        )
        path = bundle_target_path(hardware_id, version)
        self.bundles[path] = built
        self.files[repo_paths.targets_url(self.repo_url) + path] = built.data
        return self.list_image(path, built.length, built.sha256, hardware_id, version, counter)

    def list_image(
        self, path: str, length: int, sha256: str, hardware_id: str, version: str, counter: int
    ) -> TargetFile:
        """List a bundle served elsewhere (e.g. a file too big for memory) and re-sign the Image repository."""
        target = image_target(path, length, sha256, hardware_id, version, counter)
        self.image_targets[path] = target
        self.publish_image()
        return target

    def publish_image(self, *, signers: RoleSigners | None = None, now: datetime | None = None) -> dict[str, bytes]:
        self.image_versions, published = publish_targets(
            self.image_targets, signers or self.image_signers, Expiry(), now or self.now, self.image_versions
        )
        self.serve(repo_paths.image_metadata_url(self.repo_url), published)
        return published

    # -- Director ------------------------------------------------------------------

    def add_car(self, vin: str) -> None:
        """Serve the Director's root under ``vin``, where the car starts its chain."""
        self.files[repo_paths.director_metadata_url(self.repo_url, vin) + "1.root.json"] = self.director_root

    def assign(
        self,
        targets: Mapping[str, TargetFile],
        *,
        vin: str,
        signed_vin: str | None = None,
        signers: RoleSigners | None = None,
        now: datetime | None = None,
        ecu_failure_policy: str | None = None,
        consent: Mapping[str, object] | None = None,
        maintenance_window: Mapping[str, object] | None = None,
    ) -> dict[str, bytes]:
        """Publish Director targets for ``vin``: ECU serial to the image target it must install
        (``signed_vin``: another VIN signed into it; ``consent``: an owner-page answer signed in;
        ``maintenance_window``: the car's window, :class:`firmware_bundles.window.InstallWindow` as JSON)."""
        signed_vin = signed_vin or vin
        director = {
            t.path: director_target(t, signed_vin, serial, ecu_failure_policy=ecu_failure_policy)
            for serial, t in targets.items()
        }
        previous = self.director_versions.get(vin, RepoVersions())
        versions, published = publish_targets(
            director,
            signers or self.director_signers,
            Expiry(),
            now or self.now,
            previous,
            extra={
                "vin": signed_vin,
                **({"consent": dict(consent)} if consent is not None else {}),
                **({"maintenance_window": dict(maintenance_window)} if maintenance_window is not None else {}),
            },
        )
        self.director_versions[vin] = versions
        self.serve_director(published, vin)
        return published

    def serve_director(self, published: Mapping[str, bytes], vin: str) -> None:
        self.serve(repo_paths.director_metadata_url(self.repo_url, vin), published)

    # -- files ---------------------------------------------------------------------

    def serve(self, base: str, published: Mapping[str, bytes]) -> None:
        for name, data in published.items():
            self.files[base + name] = data

    def write_under(self, directory: Path) -> None:
        """Write every file at its path below ``repo_url``, ``directory`` standing for ``repo_url``."""
        prefix = self.repo_url.rstrip("/") + "/"
        for url, data in self.files.items():
            if not isinstance(data, bytes) or not url.startswith(prefix):
                raise ValueError(f"{url!r} is not bytes below {prefix!r}")
            path = directory / url.removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
