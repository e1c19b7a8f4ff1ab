"""The car's config bundle: what provisioning writes and the agent reads (``agent.toml`` and friends).

Both ``ota vehicles provision`` and ``vehicle-agent init`` write it from the
server's provisioning answer (``POST /api/v1/vehicles/{vin}/provision``), so the
layout is spelled here, once; ``vehicle_agent.config.load_config`` reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firmware_bundles.errors import MalformedMessage

AGENT_TOML = "agent.toml"
IMAGE_ROOT_FILE = "image_root.json"
DIRECTOR_ROOT_FILE = "director_root.json"
REPORT_KEY_FILE = "report_key.pem"
CA_CERT_FILE = "ca.crt"
CLIENT_CERT_FILE = "client.crt"
CLIENT_KEY_FILE = "client.key"
STATE_DIR = "state"


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write (0600 when ``private``) and rename into place, so a crash never leaves half a key."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"provisioning answer: '{key}' missing or not a string")
    return value


def write_bundle(directory: Path, identity: Mapping[str, Any]) -> Path:
    """Write the bundle for one provisioning answer into ``directory``; return the agent.toml path.

    The answer must carry ``agent_config`` (single-car provisioning does). TLS files are
    written only when a certificate was issued.
    """
    config = identity.get("agent_config")
    if not isinstance(config, Mapping):
        raise MalformedMessage("provisioning answer: 'agent_config' missing")
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / IMAGE_ROOT_FILE, _text(config, "image_root").encode())
    write_file(directory / DIRECTOR_ROOT_FILE, _text(config, "director_root").encode())
    write_file(directory / REPORT_KEY_FILE, _text(identity, "report_private_key").encode(), private=True)
    lines = [
        f"vin = {toml_str(_text(config, 'vin'))}",
        f"mqtt_url = {toml_str(_text(config, 'mqtt_url'))}",
        f"repo_url = {toml_str(_text(config, 'repo_url'))}",
        f"state_dir = {toml_str(STATE_DIR)}",
        f"image_root = {toml_str(IMAGE_ROOT_FILE)}",
        f"director_root = {toml_str(DIRECTOR_ROOT_FILE)}",
        f"report_key = {toml_str(REPORT_KEY_FILE)}",
    ]
    if identity.get("client_certificate"):
        write_file(directory / CA_CERT_FILE, _text(identity, "ca_certificate").encode())
        write_file(directory / CLIENT_CERT_FILE, _text(identity, "client_certificate").encode())
        write_file(directory / CLIENT_KEY_FILE, _text(identity, "client_key").encode(), private=True)
        lines += [
            f"tls_ca = {toml_str(CA_CERT_FILE)}",
            f"tls_cert = {toml_str(CLIENT_CERT_FILE)}",
            f"tls_key = {toml_str(CLIENT_KEY_FILE)}",
        ]
    ecus = config.get("ecus")
    if not isinstance(ecus, list) or not ecus:
        raise MalformedMessage("provisioning answer: 'agent_config.ecus' missing")
    for ecu in ecus:
        lines += ["", "[[ecus]]"]
        lines += [f"{k} = {toml_str(_text(ecu, k))}" for k in ("serial", "hardware_id", "installed_version")]
    path = directory / AGENT_TOML
    write_file(path, ("\n".join(lines) + "\n").encode())
    return path
