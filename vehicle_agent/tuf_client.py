"""`vehicle-agent tuf-client`: the agent's TUF client behind the tuf-conformance CLI protocol.

The conformance suite (theupdateframework/tuf-conformance, CLIENT-CLI.md) drives a
client through three commands, ``init``, ``refresh`` and ``download``, and judges it by
exit codes, the metadata it keeps and the requests it makes. This module runs exactly
the pieces the agent uses (``tuf.ngclient.Updater`` over the agent's own transport and
fetcher), so an outside suite tests the verifier the cars run.

    vehicle-agent tuf-client --metadata-dir DIR init ROOT.json
    vehicle-agent tuf-client --metadata-dir DIR --metadata-url URL refresh
    vehicle-agent tuf-client --metadata-dir DIR --metadata-url URL --target-name PATH \\
        [--target-name PATH ...] --target-base-url URL --target-dir DIR download

python-tuf is imported inside the commands so that loading the agent's CLI (and so
the resident ``vehicle-agent run``) does not pay for it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

import typer

if TYPE_CHECKING:
    from tuf.ngclient import Updater

    from vehicle_agent.transport import TufFetcher

log = logging.getLogger(__name__)
app = typer.Typer(
    help="TUF client for the tuf-conformance CLI protocol (init, refresh, download).",
    no_args_is_help=True,
    add_completion=False,
)


@dataclass(frozen=True)
class ClientOptions:
    metadata_dir: Path
    metadata_url: str | None
    target_names: tuple[str, ...]
    target_base_url: str | None
    target_dir: Path | None


def _options(ctx: typer.Context) -> ClientOptions:
    options: ClientOptions = ctx.obj
    return options


def _fail(message: str) -> typer.Exit:
    typer.echo(f"tuf-client: {message}", err=True)
    return typer.Exit(1)


@app.callback()
def main(
    ctx: typer.Context,
    metadata_dir: Annotated[Path, typer.Option(help="Where trusted metadata is kept")],
    metadata_url: Annotated[str | None, typer.Option(help="The repository's metadata URL")] = None,
    target_name: Annotated[
        list[str] | None, typer.Option(help="TUF target path to download (repeat for more, fetched in order)")
    ] = None,
    target_base_url: Annotated[str | None, typer.Option(help="The repository's targets URL")] = None,
    target_dir: Annotated[Path | None, typer.Option(help="Where verified targets are stored")] = None,
) -> None:
    """Options come before the command, as the conformance protocol has it."""
    ctx.obj = ClientOptions(metadata_dir, metadata_url, tuple(target_name or ()), target_base_url, target_dir)


def _updater(options: ClientOptions, fetcher: TufFetcher) -> Updater:
    from vehicle_agent.verifier import LeanUpdater

    if not options.metadata_url:
        raise _fail("--metadata-url is required")
    root = options.metadata_dir / "root.json"
    if not root.is_file():
        raise _fail(f"no trusted root in {options.metadata_dir}: run init first")
    target_dir = str(options.target_dir) if options.target_dir else None
    return LeanUpdater(
        str(options.metadata_dir),
        options.metadata_url.rstrip("/") + "/",
        target_dir,
        (options.target_base_url.rstrip("/") + "/") if options.target_base_url else None,
        fetcher=fetcher,
        bootstrap=root.read_bytes(),
    )


@app.command()
def init(ctx: typer.Context, trusted_root: Annotated[Path, typer.Argument(help="The initial root.json")]) -> None:
    """Trust ``trusted_root``; no request is made."""
    options = _options(ctx)
    try:
        options.metadata_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trusted_root, options.metadata_dir / "root.json")
    except OSError as exc:
        raise _fail(f"cannot initialise: {exc}") from exc


@app.command()
def refresh(ctx: typer.Context) -> None:
    """Update top-level metadata following the TUF client workflow."""
    from tuf.api.exceptions import DownloadError, RepositoryError

    from vehicle_agent.transport import HttpxTransport, TufFetcher, make_http_client

    with make_http_client() as http:
        try:
            _updater(_options(ctx), TufFetcher(HttpxTransport(http))).refresh()
        except (RepositoryError, DownloadError, OSError) as exc:
            raise _fail(f"refresh failed: {type(exc).__name__}: {exc}") from exc


@app.command()
def download(ctx: typer.Context) -> None:
    """Refresh, then fetch and verify each target in turn (kept, and not fetched again, if cached).

    The first target that is unknown or fails verification ends the command with exit 1.
    """
    from tuf.api.exceptions import DownloadError, RepositoryError

    from vehicle_agent.transport import HttpxTransport, TufFetcher, make_http_client

    options = _options(ctx)
    if not options.target_names or not options.target_dir or not options.target_base_url:
        raise _fail("download needs --target-name, --target-base-url and --target-dir")
    options.target_dir.mkdir(parents=True, exist_ok=True)
    with make_http_client() as http:
        try:
            updater = _updater(options, TufFetcher(HttpxTransport(http)))
            updater.refresh()
            for name in options.target_names:
                _fetch_one(updater, name, options.target_dir)
        except (RepositoryError, DownloadError, OSError) as exc:
            raise _fail(f"download failed: {type(exc).__name__}: {exc}") from exc


def _fetch_one(updater: Updater, name: str, target_dir: Path) -> None:
    info = updater.get_targetinfo(name)
    if info is None:
        raise _fail(f"target {name!r} not found in trusted metadata")
    local = str(target_dir / quote(name, safe=""))  # one stable file name per target path
    if updater.find_cached_target(info, local) is None:
        updater.download_target(info, local)
