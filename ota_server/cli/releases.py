"""``ota releases build|upload|list|retire|sign``: firmware releases, from bundle to published targets.

``build`` works offline; ``upload`` and ``list`` go through the REST API; ``sign`` signs the
server's pending Image targets with the offline targets key (see :mod:`ota_server.cli.keys`).
``ota release sign``, the old spelling, still works and says so on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import typer

from ota_server.cli.common import (
    DEFAULT_SERVER,
    JsonOption,
    ServerOption,
    TokenOption,
    client_for,
    emit,
    table,
)
from ota_server.cli.keys import OfflineDirOption, PassphraseEnvOption, PromptOption, passphrase_from
from ota_server.errors import OtaError

releases_app = typer.Typer(
    help="Releases: build a bundle, upload it, list them, sign them offline.", no_args_is_help=True
)
# The old spelling `ota release sign`, hidden from help; it says it is deprecated and does the same.
deprecated_release_app = typer.Typer(help="Deprecated: use `ota releases sign`.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(releases_app, name="releases")
    app.add_typer(deprecated_release_app, name="release", hidden=True)


@releases_app.command("build")
def releases_build(
    image: Annotated[Path, typer.Option(exists=True, dir_okay=False, readable=True, help="The firmware image")],
    hardware_id: Annotated[str, typer.Option(help="The ECU hardware id it is for")],
    version: Annotated[str, typer.Option(help="The image's version")],
    counter: Annotated[int, typer.Option(min=0, help="Release counter (anti-rollback)")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="The bundle file to write")],
    as_json: JsonOption = False,
) -> None:
    """Pack an image into a bundle (offline: no server needed)."""
    from firmware_bundles.bundle import build_bundle
    from firmware_bundles.errors import ContractError

    try:
        built = build_bundle(image.read_bytes(), hardware_id, version, counter)
    except ContractError as exc:
        raise typer.BadParameter(str(exc)) from exc
    out.write_bytes(built.data)
    manifest = built.manifest
    data = {
        "bundle": str(out),
        "bytes": len(built.data),
        "hardware_id": manifest.hardware_id,
        "version": manifest.version,
        "release_counter": manifest.release_counter,
        "image_sha256": manifest.image_sha256,
    }
    emit(
        as_json,
        data,
        lambda: typer.echo(f"wrote {out} ({len(built.data)} bytes, image sha256 {manifest.image_sha256})"),
    )


@releases_app.command("upload")
def releases_upload(
    bundle: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The bundle file")],
    hardware_id: Annotated[str, typer.Option(help="The ECU hardware id it is for")],
    version: Annotated[str, typer.Option(help="The image's version")],
    counter: Annotated[int, typer.Option(min=0, help="Release counter (anti-rollback)")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a bundle as a release (pending until `ota releases sign` when the targets key is offline)."""
    with client_for(server, token) as client:
        release = client.upload_release(bundle.read_bytes(), hardware_id, version, counter)
    state = "published" if release.get("published", True) else "pending offline signature"
    emit(as_json, release, lambda: typer.echo(f"release {release['id']}: {release['target_path']} ({state})"))


@releases_app.command("list")
def releases_list(
    hardware_id: Annotated[str | None, typer.Option(help="Only releases for this hardware")] = None,
    retired: Annotated[bool | None, typer.Option("--retired/--in-use", help="Only retired / in-use releases")] = None,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every release (every page)."""
    filters = {k: v for k, v in {"hardware_id": hardware_id, "retired": retired}.items() if v is not None}
    with client_for(server, token) as client:
        releases = client.releases(**filters)
    columns = ["id", "hardware_id", "version", "release_counter", "length", "published", "created_at", "retired_at"]
    emit(as_json, releases, lambda: table("Releases", columns, [[r.get(c) for c in columns] for r in releases]))


@releases_app.command("retire")
def releases_retire(
    release_id: Annotated[int, typer.Argument(min=1, help="The release's id")],
    reason: Annotated[str, typer.Option(help="Why (kept with the release and in the audit log)")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retire a release no recall or unfinished campaign uses: no new recall may name it."""
    with client_for(server, token) as client:
        release = client.retire_release(release_id, reason)
    emit(as_json, release, lambda: typer.echo(f"release {release['id']} retired by {release['retired_by']}"))


@releases_app.command("sign")
def releases_sign(
    offline_dir: OfflineDirOption,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Fetch the pending Image targets, sign it with the offline targets key, and publish it."""

    from ota_server.cli import common
    from ota_server.signing.offline import OfflineSigningError, sign_pending

    base = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    passphrase = passphrase_from(passphrase_env, prompt_passphrase)
    try:
        transport = common.transport_override
        with httpx.Client(base_url=base, headers=headers, timeout=60, transport=transport) as client:
            result = sign_pending(client, offline_dir, passphrase)
    except (OfflineSigningError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    for line in result.summary:
        typer.echo(line)
    typer.echo(f"published targets v{result.targets_version}: releases {result.release_ids}")


@deprecated_release_app.command("sign")
def deprecated_release_sign(
    offline_dir: OfflineDirOption,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Deprecated spelling of `ota releases sign`."""
    typer.echo("warning: `ota release sign` is deprecated; use `ota releases sign` (same options)", err=True)
    releases_sign(offline_dir, server, token, passphrase_env, prompt_passphrase)
