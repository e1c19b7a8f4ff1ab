"""``vehicle-agent``: set a car up from the server, run the agent, show its state.

The entry point is the only place that builds configuration and real I/O parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import ssl
from pathlib import Path
from typing import Annotated, Any

import typer

from firmware_bundles.errors import ContractError, InvalidVin
from firmware_bundles.provisioning import AGENT_TOML, write_bundle, write_file
from firmware_bundles.vin import validate_vin
from vehicle_agent import tuf_client
from vehicle_agent.agent import Agent
from vehicle_agent.config import (
    DATA_DIR,
    DEFAULT_CONFIG,
    AgentConfig,
    keep_local_settings,
    load_config,
    parse_existing,
)
from vehicle_agent.consent import Channel, ConsentBox, ConsentError
from vehicle_agent.errors import AgentError
from vehicle_agent.installer import FileSlots
from vehicle_agent.journal import Journal
from vehicle_agent.lazy_transport import LazyTransport
from vehicle_agent.link import CarMqttLink, tls_context
from vehicle_agent.owner import Consent
from vehicle_agent.tryboot import slot_factory

app = typer.Typer(help="The OTA recall vehicle agent.", no_args_is_help=True, add_completion=False)
app.add_typer(tuf_client.app, name="tuf-client")
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="agent.toml written by 'init'")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _load(path: Path) -> AgentConfig:
    try:
        return load_config(path)
    except AgentError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def init(
    server: Annotated[str, typer.Option(help="Server base URL, e.g. http://127.0.0.1:8000")],
    vin: Annotated[str, typer.Option(help="This car's VIN")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write agent.toml, keys and roots (the data partition)")
    ] = DATA_DIR,
    certificate: Annotated[bool, typer.Option(help="Also get an MQTT client certificate (TLS brokers)")] = True,
    token: Annotated[
        str | None, typer.Option(envvar="OTA_TOKEN", help="An operator's API token (env OTA_TOKEN)")
    ] = None,
) -> None:
    """Provision this car on the server (report key, certificate) and write its config bundle and slots.

    Provisioning again replaces the car's key: the old bundle's reports are rejected from then on.
    An existing agent.toml keeps its local settings (the [installer], [health], [vehicle], [download],
    [mqtt] and [renewal] tables, state_dir and durable); its previous text is saved as agent.toml.before-init.
    """
    try:
        vin = validate_vin(vin)
    except InvalidVin as exc:
        raise _fail(str(exc)) from exc
    target = directory / AGENT_TOML
    try:
        previous = target.read_text(encoding="utf-8") if target.exists() else None
        if previous is not None:
            parse_existing(previous, str(target))  # refuse before the server replaces the car's key
    except (OSError, AgentError) as exc:
        raise _fail(str(exc)) from exc
    import httpx  # lazy: the resident agent (`run`) never needs it until a campaign comes

    url = f"{server.rstrip('/')}/api/v1/vehicles/{vin}/provision"
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(url, params={"certificate": certificate}, headers=headers, timeout=30)
        response.raise_for_status()
        doc: Any = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise _fail(f"cannot provision at {url}: {exc}") from exc
    try:
        if previous is not None:
            write_file(directory / f"{AGENT_TOML}.before-init", previous.encode(), private=True)
        path = write_bundle(directory, doc)
        if previous is not None:
            merged, kept = keep_local_settings(previous, path.read_text(encoding="utf-8"), str(path))
            write_file(path, merged.encode(), private=True)
            typer.echo(f"kept from the existing {AGENT_TOML}: {', '.join(kept) or 'nothing'}", err=True)
        config = load_config(path)
    except (OSError, AgentError, ContractError) as exc:
        raise _fail(str(exc)) from exc
    for ecu in config.ecus:
        FileSlots.open_or_seed(config.state_dir / "slots" / ecu.serial, ecu.hardware_id, ecu.installed_version)
    typer.echo(str(path))


async def _run(config: AgentConfig) -> None:
    context = tls_context(config)
    link = CarMqttLink(config.vin, config.mqtt_url, config.mqtt, tls_context=context)
    clients: list[Any] = []
    transport = LazyTransport(lambda: _http_transport(config, clients))
    renewal = _renew_certificate(config, context)
    try:
        agent = Agent(config, link=link, transport=transport, slots=slot_factory(config))
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await agent.run()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.announce_offline(), timeout=5)
    finally:
        if renewal is not None:
            renewal.cancel()
        for client in clients:
            client.close()


def _renew_certificate(config: AgentConfig, context: ssl.SSLContext | None) -> asyncio.Task[None] | None:
    """Keep the client certificate renewed (at start, then daily), reloading ``context`` in place."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    from vehicle_agent.agent import utc_now
    from vehicle_agent.renewal import CertificateRenewer, http_post

    renewer = CertificateRenewer(config, http_post, clock=utc_now, tls_context=context)
    return asyncio.create_task(renewer.run(), name="certificate-renewal")


def _http_transport(config: AgentConfig, clients: list[Any]) -> Any:
    """The real HTTP transport, built when the first campaign needs it."""
    from vehicle_agent.transport import HttpxTransport, make_http_client

    client = make_http_client(config.download, max_connections=4)
    clients.append(client)
    return HttpxTransport(client, chunk_size=config.download.chunk_size)


@app.command()
def run(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    cfg = _load(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(_run(cfg))


@app.command()
def status(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Print the journal and the slots as JSON."""
    cfg = _load(config)
    try:
        journal = Journal(cfg.state_dir / "journal.json", durable=False)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    installed = journal.data.installed
    slots = {e.serial: FileSlots(cfg.state_dir / "slots" / e.serial) for e in cfg.ecus}
    described = {k: s.describe() if (s.directory / "boot.json").exists() else None for k, s in slots.items()}
    body = {
        "vin": cfg.vin,
        "installed": {
            e.serial: dict(
                zip(("version", "release_counter"), installed.get(e.serial, (e.installed_version, 0)), strict=True)
            )
            for e in cfg.ecus
        },
        "campaigns": {str(k): v.to_json() for k, v in journal.data.campaigns.items()},
        "outbox": len(journal.data.outbox),
        "slots": described,
    }
    typer.echo(json.dumps(body, indent=2))


consent_app = typer.Typer(
    help="The owner's answer to a pending non-safety update (what a head unit does, from a shell).",
    no_args_is_help=True,
)
app.add_typer(consent_app, name="consent")


def _box(config: Path) -> ConsentBox:
    cfg = _load(config)
    return ConsentBox(cfg.state_dir / "consent", durable=cfg.durable)


@consent_app.command("show")
def consent_show(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Print the pending request (the notice, the signed version and hash) as JSON."""
    request = _box(config).pending()
    if request is None:
        raise _fail("no consent request pending")
    typer.echo(json.dumps(request, indent=2))


def _answer(config: Path, answer: Consent) -> None:
    try:
        body = _box(config).answer(answer, channel=Channel.CLI)
    except ConsentError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{answer.value}: campaign {body['campaign_id']}, images {body['images_key']}")


@consent_app.command("accept")
def consent_accept(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Install the pending update (exactly the images the request names)."""
    _answer(config, Consent.ACCEPT)


@consent_app.command("decline")
def consent_decline(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Refuse the pending update (the car reports declined)."""
    _answer(config, Consent.DECLINE)


@consent_app.command("postpone")
def consent_postpone(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Not now: the car asks again at its next look."""
    _answer(config, Consent.POSTPONE)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
