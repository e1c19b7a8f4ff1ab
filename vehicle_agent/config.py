"""The agent's configuration: built once at the entry point and passed down.

A car reads ``agent.toml`` (:func:`load_config`); the simulator builds the same
:class:`AgentConfig` straight from the server's agent-config document
(:func:`config_from_agent_config`). Nothing below the entry point reads the environment.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from firmware_bundles.errors import InvalidVin
from firmware_bundles.provisioning import REPORT_KEY_FILE, write_file
from firmware_bundles.vin import validate_vin
from vehicle_agent.errors import ConfigError

AGENT_VERSION = "0.1.0"
IMAGE_ROOT_FILE = "image_root.json"
DIRECTOR_ROOT_FILE = "director_root.json"
# The car's own files (identity, keys, roots, agent.toml, and the journal under state_dir) live on the
# data partition, which no update replaces; the root file system is rewritten by every install
# (docs/raspberry-pi.md). `vehicle-agent init` writes here, `run`/`status`/`consent` read from here.
DATA_DIR = Path("/data/ota")
DEFAULT_CONFIG = DATA_DIR / "agent.toml"
# What a person sets on the car and the server's provisioning answer does not carry: `init` keeps
# these tables and keys of an existing agent.toml (the server's identity, URLs and ECUs are replaced).
LOCAL_TABLES = ("installer", "health", "vehicle", "download", "mqtt", "renewal")
LOCAL_KEYS = ("state_dir", "durable", "report_linger_s")
DEFAULT_REPORT_LINGER_S = 1.0
MAX_REPORT_LINGER_S = 60.0


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
    # Whole-bundle deadline against slow retrieval (a server trickling bytes), retries included.
    total_timeout: float = 900.0
    # ... and a floor on the average speed over each window, so a trickle is cut off early.
    min_bytes_per_second: float = 1024.0
    speed_window: float = 60.0
    # Deadline for one metadata file (they are small; a trickle is an attack, not a slow link).
    metadata_timeout: float = 120.0
    # Transient failures (network cut, 5xx) resume the download after a jittered exponential backoff.
    retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    # A repository answering 5xx (e.g. its database is down) or unreachable is asked again, with the
    # same backoff, for this many seconds before the campaign fails (well inside a campaign's
    # device timeout, 3600 s by default): a server restart or a short outage does not fail the car.
    outage_patience: float = 600.0
    # Free space kept on the downloads filesystem beyond the bundle itself.
    disk_reserve_bytes: int = 16 * 1024 * 1024
    # Deltas are applied in memory: only for images up to this size.
    max_delta_image_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class PiSlot:
    """One Raspberry Pi slot: the FAT boot partition the firmware boots, and where its image goes."""

    boot_partition: int
    device: Path


@dataclass(frozen=True)
class TrybootOptions:
    """The Pi firmware's tryboot A/B (see docs/raspberry-pi.md); paths are the Pi's, tests point them elsewhere."""

    autoboot_txt: Path = Path("/boot/autoboot/autoboot.txt")
    # the firmware says here which partition it booted and whether it was a try boot
    bootloader_node: Path = Path("/proc/device-tree/chosen/bootloader")
    boot_id: Path = Path("/proc/sys/kernel/random/boot_id")
    slot_a: PiSlot = PiSlot(2, Path("/dev/mmcblk0p5"))
    slot_b: PiSlot = PiSlot(3, Path("/dev/mmcblk0p6"))
    tryboot_command: tuple[str, ...] = ("reboot", "0 tryboot")
    reboot_command: tuple[str, ...] = ("reboot",)
    # how long to wait for the reboot to take the agent down before calling it a failure
    reboot_wait: float = 300.0


@dataclass(frozen=True)
class InstallerOptions:
    """``backend``: ``file`` (slots as files; simulator, tests) or ``rpi-tryboot``.

    The Pi backend drives the ECU ``ecu`` (default: the first); the others keep file slots.
    ``max_boot_attempts`` bounds the reboot step: past it the agent gives up and rolls back.
    """

    backend: str = "file"
    ecu: str | None = None
    max_boot_attempts: int = 3
    tryboot: TrybootOptions = TrybootOptions()


def _pi_slot(raw: Mapping[str, Any], where: str) -> PiSlot:
    return PiSlot(int(_require(raw, "boot_partition", int, where)), Path(_require(raw, "device", str, where)))


def installer_options(raw: Mapping[str, Any], base: Path, where: str) -> InstallerOptions:
    """The ``[installer]`` table (with ``[installer.tryboot]``, ``.slot_a`` and ``.slot_b``)."""
    table = dict(raw)
    tryboot = dict(table.pop("tryboot", {}))
    for slot in ("slot_a", "slot_b"):
        if slot in tryboot:
            tryboot[slot] = _pi_slot(tryboot[slot], f"{where}: installer.tryboot.{slot}")
    for key in ("autoboot_txt", "bootloader_node", "boot_id"):
        if key in tryboot:
            tryboot[key] = base / str(tryboot[key])
    for key in ("tryboot_command", "reboot_command"):
        if key in tryboot:
            tryboot[key] = tuple(str(part) for part in tryboot[key])
    try:
        options = InstallerOptions(**table, tryboot=TrybootOptions(**tryboot))
    except TypeError as exc:
        raise ConfigError(f"{where}: unknown or misspelt installer option: {exc}") from exc
    if options.backend not in ("file", "rpi-tryboot"):
        raise ConfigError(f"{where}: installer backend must be 'file' or 'rpi-tryboot', got {options.backend!r}")
    if options.max_boot_attempts < 1:
        raise ConfigError(f"{where}: installer max_boot_attempts must be at least 1")
    if options.tryboot.slot_a.boot_partition == options.tryboot.slot_b.boot_partition:
        raise ConfigError(f"{where}: the two slots need different boot partitions")
    return options


@dataclass(frozen=True)
class VehicleOptions:
    """The ``[vehicle]`` table: where readiness comes from and how a deferred campaign waits.

    ``state_file``: JSON another service keeps current (:class:`vehicle_agent.vehicle.FileVehicleState`;
    missing, unreadable or older than ``max_age`` seconds reads as not ready). Unset: no
    vehicle bus, preconditions are assumed met (logged). A deferred campaign looks again
    every ``retry_interval`` seconds, spread by +/- ``retry_jitter`` (a fraction), and at
    once when the state source signals a change. ``consent`` is how a non-safety update
    is answered: ``ask`` (the default: the head unit's local interface under
    ``<state_dir>/consent/``, see :mod:`vehicle_agent.consent`, or the owner page through
    the signed metadata), or a fixed ``postpone``, ``accept`` or ``decline`` for a test rig.
    """

    state_file: Path | None = None
    max_age: float = 120.0
    retry_interval: float = 300.0
    retry_jitter: float = 0.2
    consent: str = "ask"


@dataclass(frozen=True)
class RenewalOptions:
    """The ``[renewal]`` table: the client certificate is renewed once less than ``renew_before_days`` remain.

    Checked at start and every ``check_interval`` seconds. ``server_url`` is the API's base
    URL (default: ``repo_url`` without its trailing ``/repo``).
    """

    renew_before_days: float = 30.0
    check_interval: float = 86_400.0
    server_url: str | None = None


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
    # PEM of the key that signs every report (``ota vehicles provision``); without one the
    # agent sends unsigned reports, which the server rejects.
    report_key: bytes | None = field(default=None, repr=False)
    # mqtts:// only: the CA that signed the broker, and this car's client certificate and key.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    health: HealthOptions = HealthOptions()
    download: DownloadLimits = DownloadLimits()
    mqtt: MqttOptions = MqttOptions()
    installer: InstallerOptions = InstallerOptions()
    vehicle: VehicleOptions = VehicleOptions()
    renewal: RenewalOptions = RenewalOptions()
    # fsync the journal and boot state; the simulator may turn it off for thousands of cars.
    durable: bool = True
    # Steps that follow the first unsent one within this many seconds go to the server in one
    # signed report batch (needs a server that takes batches: deploy the server first); 0 sends
    # each step alone, at once, as agents before batches did. A car's agent.toml and the
    # simulator's agent-config default to DEFAULT_REPORT_LINGER_S; a config built in code, to 0.
    report_linger_s: float = 0.0

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
    from tuf.api.metadata import Metadata, Root  # lazy: an idle agent does not hold python-tuf

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
        if "renewal" in doc:
            out["renewal"] = RenewalOptions(**doc["renewal"])
    except TypeError as exc:
        raise ConfigError(f"{where}: unknown or misspelt option: {exc}") from exc
    if "durable" in doc:
        out["durable"] = _require(doc, "durable", bool, where)
    out["report_linger_s"] = DEFAULT_REPORT_LINGER_S
    if "report_linger_s" in doc:
        linger = doc["report_linger_s"]
        if isinstance(linger, bool) or not isinstance(linger, int | float) or not 0 <= linger <= MAX_REPORT_LINGER_S:
            raise ConfigError(
                f"{where}: 'report_linger_s' must be a number of seconds from 0 to {MAX_REPORT_LINGER_S:g}"
            )
        out["report_linger_s"] = float(linger)
    renewal: RenewalOptions = out.get("renewal", RenewalOptions())
    if renewal.renew_before_days <= 0 or renewal.check_interval <= 0:
        raise ConfigError(f"{where}: renewal renew_before_days and check_interval must be positive")
    if renewal.server_url is not None:
        _check_url(renewal.server_url, ("http", "https"), f"{where}: renewal.server_url")
    download: DownloadLimits = out.get("download", DownloadLimits())
    if download.chunk_size <= 0 or download.total_timeout <= 0 or download.speed_window <= 0:
        raise ConfigError(f"{where}: download chunk_size, total_timeout and speed_window must be positive")
    if download.retries < 0 or download.min_bytes_per_second < 0 or download.disk_reserve_bytes < 0:
        raise ConfigError(f"{where}: download retries, min_bytes_per_second and disk_reserve_bytes must be >= 0")
    if download.outage_patience < 0 or download.backoff_base <= 0 or download.backoff_max < download.backoff_base:
        raise ConfigError(
            f"{where}: download outage_patience must be >= 0, backoff_base > 0 and backoff_max >= backoff_base"
        )
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
        **_identity(doc, base, where),
        **_options(doc, where),
        **_installer(doc, base, where),
        **_vehicle(doc, base, where),
    )


def _vehicle(doc: Mapping[str, Any], base: Path, where: str) -> dict[str, Any]:
    if "vehicle" not in doc:
        return {}
    table = dict(doc["vehicle"])
    if "state_file" in table:
        table["state_file"] = base / str(table["state_file"])
    try:
        options = VehicleOptions(**table)
    except TypeError as exc:
        raise ConfigError(f"{where}: unknown or misspelt vehicle option: {exc}") from exc
    if options.retry_interval <= 0 or not 0 <= options.retry_jitter < 1 or options.max_age <= 0:
        raise ConfigError(f"{where}: vehicle retry_interval and max_age must be positive, retry_jitter in [0, 1)")
    if options.consent not in ("ask", "postpone", "accept", "decline"):
        raise ConfigError(f"{where}: vehicle consent must be ask, postpone, accept or decline, got {options.consent!r}")
    return {"vehicle": options}


def _installer(doc: Mapping[str, Any], base: Path, where: str) -> dict[str, Any]:
    if "installer" not in doc:
        return {}
    return {"installer": installer_options(doc["installer"], base, where)}


def _identity(doc: Mapping[str, Any], base: Path, where: str) -> dict[str, Any]:
    """The optional report key (read now) and TLS file paths (checked now, read by the link)."""
    out: dict[str, Any] = {}
    if "report_key" in doc:
        key_path = base / _require(doc, "report_key", str, where)
        try:
            out["report_key"] = key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read report_key {key_path}: {exc.strerror or exc}") from exc
    for name in ("tls_ca", "tls_cert", "tls_key"):
        if name in doc:
            tls_path = base / _require(doc, name, str, where)
            if not tls_path.is_file():
                raise ConfigError(f"{where}: {name} {tls_path} is not a file")
            out[name] = tls_path
    if ("tls_cert" in out) != ("tls_key" in out):
        raise ConfigError(f"{where}: tls_cert and tls_key go together")
    return out


def config_from_agent_config(doc: Mapping[str, Any], state_dir: Path, **options: Any) -> AgentConfig:
    """Build a config from the server's ``GET /api/v1/vehicles/{vin}/agent-config`` document.

    ``options`` overrides the defaults (``health=``, ``download=``, ``mqtt=``, ``durable=``,
    ``report_linger_s=``: :data:`DEFAULT_REPORT_LINGER_S` unless given).
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
        **({"report_linger_s": DEFAULT_REPORT_LINGER_S} | options),
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
        f"report_linger_s = {config.report_linger_s:g}",
    ]
    if config.report_key is not None:
        write_file(base / REPORT_KEY_FILE, config.report_key, private=True)
        lines.append(f"report_key = {_toml_str(REPORT_KEY_FILE)}")
    for name in ("tls_ca", "tls_cert", "tls_key"):
        tls_path: Path | None = getattr(config, name)
        if tls_path is not None:
            lines.append(f"{name} = {_toml_str(str(tls_path.resolve()))}")
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


def parse_existing(text: str, where: str) -> dict[str, Any]:
    """An existing ``agent.toml`` that ``init`` is about to replace: it must be TOML, or nothing is kept."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML ({exc}); move it away to provision afresh") from exc


_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_-]+)")


def _blocks(text: str) -> list[tuple[str | None, list[str]]]:
    """Split TOML text at its table headers: (first key of the header or None for the preamble, lines).

    Comment and blank lines just above a header go with that header's block.
    """
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header is None:
            blocks[-1][1].append(line)
            continue
        previous = blocks[-1][1]
        lead: list[str] = []
        while previous and (not previous[-1].strip() or previous[-1].lstrip().startswith("#")):
            lead.insert(0, previous.pop())
        blocks.append((header.group(1), [*lead, line]))
    return blocks


def keep_local_settings(previous: str, provisioned: str, where: str) -> tuple[str, list[str]]:
    """``provisioned`` (the new agent.toml) with ``previous``'s local tables and keys put back.

    The tables in :data:`LOCAL_TABLES` are copied as written (comments included); ``state_dir`` and
    ``durable`` replace what provisioning wrote. Returns the text and the names kept. The result is
    checked to read back with the same values, so an unusual layout is refused rather than mangled.
    """
    old = parse_existing(previous, where)
    kept = [key for key in LOCAL_KEYS if key in old]
    lines = [
        line
        for line in provisioned.rstrip("\n").splitlines()
        if not any(re.match(rf"\s*{key}\s*=", line) for key in kept)
    ]
    first_table = next((i for i, line in enumerate(lines) if _HEADER.match(line)), len(lines))
    local = [f"{key} = {_toml_value(old[key])}" for key in kept]
    lines[first_table:first_table] = local
    for name, block in _blocks(previous):
        if name in LOCAL_TABLES:
            lines += ["", *block] if block[0].strip() else block
            if name not in kept:
                kept.append(name)
    text = "\n".join(lines).rstrip("\n") + "\n"
    merged = parse_existing(text, where)
    lost = [key for key in (*LOCAL_KEYS, *LOCAL_TABLES) if old.get(key) != merged.get(key) and key in old]
    if lost:
        raise ConfigError(f"{where}: cannot keep {', '.join(lost)} as written; move the file away and re-add them")
    return text, kept


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, int | float) and math.isfinite(value):  # report_linger_s: repr is valid TOML
        return repr(value)
    raise ConfigError(f"cannot keep the value {value!r}")
