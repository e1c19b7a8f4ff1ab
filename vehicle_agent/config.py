"""The agent's configuration: built once at the entry point and passed down.

A car reads ``agent.toml`` (:func:`load_config`); the simulator builds the same
:class:`AgentConfig` straight from the server's agent-config document
(:func:`config_from_agent_config`). Nothing below the entry point reads the environment.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tuf.api.metadata import Metadata, Root

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import validate_vin
from vehicle_agent.errors import ConfigError

AGENT_VERSION = "0.1.0"
IMAGE_ROOT_FILE = "image_root.json"
DIRECTOR_ROOT_FILE = "director_root.json"


@dataclass(frozen=True)
class EcuConfig:
    serial: str
    hardware_id: str
    installed_version: str


@dataclass(frozen=True)
class HealthOptions:
    """``command`` (argv) replaces the default image-header check; it must exit 0 within ``timeout``."""

    command: tuple[str, ...] = ()
    timeout: float = 60.0


@dataclass(frozen=True)
class DownloadLimits:
    chunk_size: int = 64 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    # Whole-bundle deadline against slow retrieval (a server trickling bytes).
    total_timeout: float = 900.0


@dataclass(frozen=True)
class MqttOptions:
    keepalive: int = 60
    backoff_min: float = 1.0
    backoff_max: float = 120.0


@dataclass(frozen=True)
class AgentConfig:
    vin: str
    ecus: tuple[EcuConfig, ...]
    mqtt_url: str
    repo_url: str
    state_dir: Path
    image_root: bytes = field(repr=False)
    director_root: bytes = field(repr=False)
    health: HealthOptions = HealthOptions()
    download: DownloadLimits = DownloadLimits()
    mqtt: MqttOptions = MqttOptions()
    # fsync the journal and boot state; the simulator may turn it off for thousands of cars.
    durable: bool = True

    def ecu_hardware(self) -> dict[str, str]:
        """ECU serial to hardware id, as :func:`firmware_bundles.uptane.assignments_for` wants it."""
        return {ecu.serial: ecu.hardware_id for ecu in self.ecus}


def _require(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise ConfigError(f"{where}: '{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _check_url(url: str, schemes: Sequence[str], what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{what} must be a {' or '.join(schemes)} URL with a host, got {url!r}")
    return url


def check_root(raw: bytes, what: str) -> bytes:
    """Refuse a trusted root that is not signed root metadata (the signatures are checked by TUF)."""
    try:
        Metadata[Root].from_bytes(raw)
    except Exception as exc:  # tuf raises several types for unreadable metadata
        raise ConfigError(f"{what} is not valid TUF root metadata: {exc}") from exc
    return raw


def _ecus(raw: object, where: str) -> tuple[EcuConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: 'ecus' must be a non-empty list")
    ecus = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: ecus[{i}] must be a table")
        at = f"{where}: ecus[{i}]"
        ecus.append(
            EcuConfig(
                serial=_require(item, "serial", str, at),
                hardware_id=_require(item, "hardware_id", str, at),
                installed_version=_require(item, "installed_version", str, at),
            )
        )
    serials = [e.serial for e in ecus]
    if len(set(serials)) != len(serials):
        raise ConfigError(f"{where}: ECU serials must be unique")
    return tuple(ecus)


def _vin(raw: object, where: str) -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: 'vin' must be a string")
    try:
        return validate_vin(raw)
    except InvalidVin as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _options(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The optional [health], [download] and [mqtt] tables, with the dataclass defaults."""
    out: dict[str, Any] = {}
    try:
        if "health" in doc:
            health = dict(doc["health"])
            health["command"] = tuple(str(part) for part in health.get("command", ()))
            out["health"] = HealthOptions(**health)
        if "download" in doc:
            out["download"] = DownloadLimits(**doc["download"])
        if "mqtt" in doc:
            out["mqtt"] = MqttOptions(**doc["mqtt"])
    except TypeError as exc:
        raise ConfigError(f"{where}: unknown or misspelt option: {exc}") from exc
    if "durable" in doc:
        out["durable"] = _require(doc, "durable", bool, where)
    download: DownloadLimits = out.get("download", DownloadLimits())
    if download.chunk_size <= 0 or download.total_timeout <= 0:
        raise ConfigError(f"{where}: download chunk_size and total_timeout must be positive")
    return out


def load_config(path: Path) -> AgentConfig:
    """Read ``agent.toml``; relative paths (state_dir, roots) are relative to the file."""
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {where}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc
    base = path.parent

    def read_root(key: str, default: str) -> bytes:
        root_path = base / str(doc.get(key, default))
        try:
            return check_root(root_path.read_bytes(), f"{where}: {key} ({root_path})")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {key} {root_path}: {exc.strerror or exc}") from exc

    return AgentConfig(
        vin=_vin(doc.get("vin"), where),
        ecus=_ecus(doc.get("ecus"), where),
        mqtt_url=_check_url(_require(doc, "mqtt_url", str, where), ("mqtt", "mqtts"), f"{where}: mqtt_url"),
        repo_url=_check_url(_require(doc, "repo_url", str, where), ("http", "https"), f"{where}: repo_url"),
        state_dir=base / str(doc.get("state_dir", "state")),
        image_root=read_root("image_root", IMAGE_ROOT_FILE),
        director_root=read_root("director_root", DIRECTOR_ROOT_FILE),
        **_options(doc, where),
    )


def config_from_agent_config(doc: Mapping[str, Any], state_dir: Path, **options: Any) -> AgentConfig:
    """Build a config from the server's ``GET /api/v1/vehicles/{vin}/agent-config`` document.

    ``options`` overrides the defaults (``health=``, ``download=``, ``mqtt=``, ``durable=``).
    """
    where = "agent-config"
    keys = ("serial", "hardware_id", "installed_version")
    ecus = [{k: e.get(k) for k in keys} for e in doc.get("ecus") or [] if isinstance(e, Mapping)]
    return AgentConfig(
        vin=_vin(doc.get("vin"), where),
        ecus=_ecus(ecus, where),
        mqtt_url=_check_url(_require(doc, "mqtt_url", str, where), ("mqtt", "mqtts"), f"{where}: mqtt_url"),
        repo_url=_check_url(_require(doc, "repo_url", str, where), ("http", "https"), f"{where}: repo_url"),
        state_dir=state_dir,
        image_root=check_root(_require(doc, "image_root", str, where).encode(), f"{where}: image_root"),
        director_root=check_root(_require(doc, "director_root", str, where).encode(), f"{where}: director_root"),
        **options,
    )


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(config: AgentConfig, path: Path) -> None:
    """Write ``agent.toml`` and the two root files next to it (used by ``vehicle-agent init``)."""
    base = path.parent
    base.mkdir(parents=True, exist_ok=True)
    (base / IMAGE_ROOT_FILE).write_bytes(config.image_root)
    (base / DIRECTOR_ROOT_FILE).write_bytes(config.director_root)
    try:
        state_dir = config.state_dir.relative_to(base)
    except ValueError:
        state_dir = config.state_dir
    lines = [
        f"vin = {_toml_str(config.vin)}",
        f"mqtt_url = {_toml_str(config.mqtt_url)}",
        f"repo_url = {_toml_str(config.repo_url)}",
        f"state_dir = {_toml_str(str(state_dir))}",
        f"image_root = {_toml_str(IMAGE_ROOT_FILE)}",
        f"director_root = {_toml_str(DIRECTOR_ROOT_FILE)}",
        f"durable = {'true' if config.durable else 'false'}",
    ]
    for ecu in config.ecus:
        lines += [
            "",
            "[[ecus]]",
            f"serial = {_toml_str(ecu.serial)}",
            f"hardware_id = {_toml_str(ecu.hardware_id)}",
            f"installed_version = {_toml_str(ecu.installed_version)}",
        ]
    lines += ["", "[health]", f"command = [{', '.join(_toml_str(c) for c in config.health.command)}]"]
    lines += [f"timeout = {float(config.health.timeout)}"]
    for table, options in (("download", config.download), ("mqtt", config.mqtt)):
        lines += ["", f"[{table}]", *(f"{k} = {v!r}" for k, v in asdict(options).items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
