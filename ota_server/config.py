"""Server configuration: one frozen dataclass, built once at the entry point and passed down.

:meth:`Settings.from_env` is the only place in ``ota_server`` that reads the
environment, so every other module can be exercised with plain values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from firmware_bundles.messages import MAX_MESSAGE_BYTES
from firmware_bundles.uptane import Expiry
from ota_server.errors import InvalidInput

ENV_PREFIX = "OTA_"
SIGNING_PROCESSES = 2  # Director signing processes by default (director_signing_processes)
MAX_SIGNING_PROCESSES = 16
# A few windows can be in flight at once (a large batch's, small batches', retries), and MQTT
# numbers a session's unacknowledged messages in 16 bits: paho refuses a publish whose number is
# still in flight, so past 65,535 messages would fail and go round the retries.
MAX_NOTICE_CONCURRENCY = 32_000
MAX_PER_TICK = 30_000  # cars a campaign releases per tick by default (scheduler_max_per_tick)
MAX_PER_TICK_LIMIT = 100_000  # the most: a campaign's tick holds its cars' chains and notices in memory
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know about its surroundings.

    ``None`` means "derive a sensible default": an SQLite file under ``data_dir``,
    an embedded broker on a free port, a free HTTP port when 8000 is taken, a
    public URL made from the bound address.
    """

    data_dir: Path = Path("./var")
    database_url: str | None = None
    mqtt_url: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    public_url: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    mqtt_client_id: str = "ota-server"
    mqtt_username: str = "ota-server"
    mqtt_password: str | None = None
    mqtt_clean_session: bool = False
    # TLS to the broker (an mqtts:// URL): the CA that signed the broker's certificate,
    # and the server's own client certificate and key (``ota broker config`` issues both).
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # Where the server writes the CA's revocation list after every revocation: the file the
    # broker's ``crlfile`` names (``ota broker config`` prints it). Default: <data_dir>/ca/crl.pem.
    mqtt_crl_file: Path | None = None
    # Past one machine (issue 8). MQTT 5 against a real broker (4 = 3.1.1; the embedded broker
    # always uses 3.1.1). Replicas split the reports through the shared subscription
    # $share/<mqtt_share_group>/... (e.g. "ota-ingest"; "", the default, subscribes plainly: one
    # server, and no stale member of a group on a shared broker takes a share); each replica
    # needs its own mqtt_client_id. The broker keeps a replica's session (and the reports it has
    # not yet acknowledged) mqtt_session_expiry_s after it goes away, and sends it at most
    # mqtt_receive_maximum unacknowledged reports at once.
    mqtt_version: int = 5
    mqtt_share_group: str = ""
    mqtt_session_expiry_s: int = 86_400
    mqtt_receive_maximum: int = 1000
    # > 0 with a broker that forgets shared subscriptions when it restarts (Mosquitto 2.0):
    # also hold a plain subscription and ingest its copies for this many seconds after each
    # (re)connect, so reports published before the replicas subscribed again are not lost
    # (see ota_server/mqtt/link.py). 0 (default): off.
    mqtt_share_guard_s: float = 0.0
    # The broker URL handed to cars (agent configs), when it differs from the server's own.
    public_mqtt_url: str | None = None
    # This process in the leases table (periodic jobs run on one replica at a time); default
    # <hostname>-<pid>-<random>. A holder that stops renewing loses its lease after lease_ttl_s.
    instance_id: str | None = None
    lease_ttl_s: float = 15.0
    # Refused before parsing and counted: payloads over ingest_max_payload_bytes ("oversized"),
    # and a car's verified reports past a token bucket of ingest_vin_rate_per_s, bursts of
    # ingest_vin_burst ("flood"; rate 0 switches it off).
    ingest_max_payload_bytes: int = MAX_MESSAGE_BYTES  # at most that: the largest message the contract parses
    ingest_vin_rate_per_s: float = 5.0
    ingest_vin_burst: int = 100
    # Junk (unsigned, forged or malformed messages) never spends a car's bucket above: it has
    # buckets of its own, one per topic and one for all topics; while either is empty, that
    # topic's (or every) message is dropped before parsing ("junk_flood"; rate 0: off).
    ingest_junk_rate_per_s: float = 50.0
    ingest_junk_burst: int = 500
    ingest_junk_total_rate_per_s: float = 1000.0
    ingest_junk_total_burst: int = 10_000
    # Bundles handed out by URL: /repo/targets/... answers 307 to <prefix>/<target path>
    # (e.g. a public S3/MinIO bucket); cars check the signed length and hashes, so the store
    # is untrusted. Unset: the server streams bundles from its data dir.
    bundle_url_prefix: str | None = None
    # Run Alembic at start (default). Off (a deployment with a migrate job): refuse to start
    # on a database that is not at the newest revision.
    auto_migrate: bool = True
    ingest_batch_size: int = 500
    ingest_batch_wait_s: float = 0.05
    # Notices (and withdrawals) the broker has not acknowledged yet, at most: a launch's batch
    # goes out in this window (up to MAX_NOTICE_CONCURRENCY).
    notice_concurrency: int = 1000
    # Notices carry each car's signed Director timestamp, snapshot and targets (three requests
    # fewer per car). Agents older than the field reject such notices: on once the fleet's
    # agents take it (every agent of this repository does).
    notice_carries_metadata: bool = False
    # With notice_carries_metadata, notices also carry the Image repository's timestamp, snapshot
    # and targets (the same for every car; three requests fewer again) when the notice still fits.
    # Agents from before session 9 reject such notices: on once the fleet's agents take it.
    notice_carries_image_metadata: bool = False
    # Operators: every JSON body is capped (uploads have max_upload_bytes); each API token
    # may make rate_limit_per_s requests a second on average, bursts up to rate_limit_burst
    # (0 switches the limit off).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rate_limit_per_s: float = 200.0
    rate_limit_burst: int = 2000
    # The public VIN look-up (no token): requests per minute per client address, and the burst
    # (0 switches the limit off).
    lookup_rate_per_min: float = 30.0
    lookup_burst: int = 10
    # Deltas, built when a release is uploaded from each older release's image (up to
    # delta_max_bases of them; both images are held in memory, hence delta_max_image_bytes),
    # kept only when smaller than delta_max_ratio of the full bundle.
    delta_max_ratio: float = 0.5
    delta_max_image_bytes: int = 64 * 1024 * 1024
    delta_max_bases: int = 5
    # How long each role's signed metadata stays valid (OTA_EXPIRY_*); the server re-signs
    # timestamp and snapshot once less than half their lifetime is left, checking every
    # resign_interval_s seconds (0 switches the periodic job off).
    expiry_root_days: float = 365.0
    expiry_targets_days: float = 90.0
    expiry_snapshot_days: float = 7.0
    expiry_timestamp_hours: float = 24.0
    resign_interval_s: float = 600.0
    # The campaign scheduler's periodic tick (waves, rate limits, windows, timeouts, retries);
    # it also ticks after each ingest batch that moved a car. 0 leaves only those ticks.
    scheduler_interval_s: float = 2.0
    # Ticks asked for by ingest batches run at most this often (launches, control actions and a
    # launch's carrying on are never held back): a tick reads the campaign's cars per state, so
    # back-to-back ticks under a stream of reports would keep the database busy for nothing.
    scheduler_report_gap_s: float = 1.0
    # Cars one campaign may release (assign, sign, notify) in one tick; more carry on at once in
    # ticks of this size. A launch of up to this many cars is one tick, signed while the fleet is
    # still idle and published together: in several, each later tick ran while the cars notified
    # first loaded the machine (docs/bench/history.md, session 14).
    scheduler_max_per_tick: int = MAX_PER_TICK
    # How long the Image repository and Director root stay in memory before they are read
    # again (this process's own changes drop them at once); other replicas' changes show
    # within this many seconds.
    repo_cache_ttl_s: float = 1.0
    # Processes that sign the Director's chains of a large plan (a launch's notifying ticks with
    # notice_carries_metadata, 500 cars or more), beside the server's own process and its GIL;
    # 0: every chain signed in the server's process. They read the Director's online keys from
    # keys_dir themselves (ota_server.signing.signing_pool says why none crosses a pipe).
    director_signing_processes: int = SIGNING_PROCESSES
    # The manufacturer this service speaks for: on owner pages, in owner notices and on every
    # regulator report. The contact is the default named person of a recall's owner notice when
    # the recall names none (name, role, phone, email); the dealer locator is linked from the
    # owner's pages ("" = no link).
    manufacturer_name: str = "Example Motors"
    manufacturer_contact_name: str = ""
    manufacturer_contact_role: str = ""
    manufacturer_contact_phone: str = ""
    manufacturer_contact_email: str = ""
    dealer_locator_url: str = ""
    # The scheduled regulator-report export (ota_server.regulator.scheduled_export): when a
    # directory is set, every report of every running recall for the last full ISO week and
    # quarter is written there, checked every report_export_interval_s seconds under a lease.
    report_export_dir: Path | None = None
    report_export_interval_s: float = 3600.0
    # Webhooks (docs/webhooks.md): deliveries are sent every webhook_interval_s seconds under a
    # lease (0 switches sending off), each attempt bounded by webhook_timeout_s. A webhook URL on
    # a loopback or link-local host is accepted only while webhook_allow_loopback is true (the
    # default, for development and tests; set OTA_WEBHOOK_ALLOW_LOOPBACK=false in a deployment).
    webhook_interval_s: float = 1.0
    webhook_timeout_s: float = 5.0
    webhook_allow_loopback: bool = True
    log_level: str = "INFO"
    # "text" (human) or "json": one object a line with time, level, logger, message, campaign_id, vin.
    log_format: str = "text"

    def __post_init__(self) -> None:
        for name in ("expiry_root_days", "expiry_targets_days", "expiry_snapshot_days", "expiry_timestamp_hours"):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"{ENV_PREFIX}{name.upper()} must be > 0")
        if self.resign_interval_s < 0:
            raise InvalidInput(f"{ENV_PREFIX}RESIGN_INTERVAL_S must be >= 0")
        if self.scheduler_interval_s < 0:
            raise InvalidInput(f"{ENV_PREFIX}SCHEDULER_INTERVAL_S must be >= 0")
        if self.scheduler_report_gap_s < 0:
            raise InvalidInput(f"{ENV_PREFIX}SCHEDULER_REPORT_GAP_S must be >= 0")
        if not 1 <= self.notice_concurrency <= MAX_NOTICE_CONCURRENCY:
            raise InvalidInput(f"{ENV_PREFIX}NOTICE_CONCURRENCY must be 1 to {MAX_NOTICE_CONCURRENCY}")
        if not 1 <= self.scheduler_max_per_tick <= MAX_PER_TICK_LIMIT:
            raise InvalidInput(f"{ENV_PREFIX}SCHEDULER_MAX_PER_TICK must be 1 to {MAX_PER_TICK_LIMIT}")
        if not self.report_export_interval_s > 0:
            raise InvalidInput(f"{ENV_PREFIX}REPORT_EXPORT_INTERVAL_S must be > 0")
        if self.repo_cache_ttl_s < 0:
            raise InvalidInput(f"{ENV_PREFIX}REPO_CACHE_TTL_S must be >= 0")
        if not 0 <= self.director_signing_processes <= MAX_SIGNING_PROCESSES:
            raise InvalidInput(f"{ENV_PREFIX}DIRECTOR_SIGNING_PROCESSES must be 0 to {MAX_SIGNING_PROCESSES}")
        if self.log_format.strip().lower() not in ("text", "json"):
            raise InvalidInput(f"{ENV_PREFIX}LOG_FORMAT must be text or json")
        if self.mqtt_version not in (4, 5):
            raise InvalidInput(f"{ENV_PREFIX}MQTT_VERSION must be 4 (3.1.1) or 5")
        if self.webhook_interval_s < 0:
            raise InvalidInput(f"{ENV_PREFIX}WEBHOOK_INTERVAL_S must be >= 0")
        if not 0 < self.webhook_timeout_s <= 60:
            raise InvalidInput(f"{ENV_PREFIX}WEBHOOK_TIMEOUT_S must be > 0 and at most 60")
        if not self.lease_ttl_s > 0:
            raise InvalidInput(f"{ENV_PREFIX}LEASE_TTL_S must be > 0")
        if not 0 < self.ingest_max_payload_bytes <= MAX_MESSAGE_BYTES:
            raise InvalidInput(
                f"{ENV_PREFIX}INGEST_MAX_PAYLOAD_BYTES must be > 0 and at most {MAX_MESSAGE_BYTES}, "
                "the largest message the cars' contract parses"
            )

    @property
    def expiry(self) -> Expiry:
        return Expiry(
            root=timedelta(days=self.expiry_root_days),
            targets=timedelta(days=self.expiry_targets_days),
            snapshot=timedelta(days=self.expiry_snapshot_days),
            timestamp=timedelta(hours=self.expiry_timestamp_hours),
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ota.db').resolve()}"

    @property
    def admin_token_file(self) -> Path:
        """Where the first start writes the bootstrap admin token (mode 0600)."""
        return self.data_dir / "admin-token"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def ca_dir(self) -> Path:
        """The project's own CA (vehicle and broker certificates), made on first use."""
        return self.data_dir / "ca"

    @property
    def crl_file(self) -> Path:
        return self.mqtt_crl_file or self.ca_dir / "crl.pem"

    @property
    def bundles_dir(self) -> Path:
        return self.data_dir / "bundles"

    @property
    def resolved_public_url(self) -> str:
        """What cars and operators use to reach the API; ``/repo`` hangs below it."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port or DEFAULT_PORT}"

    @property
    def repo_url(self) -> str:
        return f"{self.resolved_public_url}/repo"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced; ``None`` values leave a field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``OTA_<FIELD>`` variables (e.g. ``OTA_DATABASE_URL``); unknown ones are ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _convert(field.name, str(field.type), raw)
        return cls(**values)


def _convert(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name.startswith("Path"):
            return Path(raw)
        if type_name.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise InvalidInput(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
    return raw
