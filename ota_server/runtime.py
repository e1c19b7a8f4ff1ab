"""Everything one running server holds, built in the app's lifespan and torn down in order.

Routers reach it through ``request.app.state.runtime``; tests reach it through
:func:`ota_server.http.app.runtime_of` to inject reports or inspect notices.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.config import Settings
from ota_server.db.migrate import require_current, upgrade
from ota_server.db.models import Recall
from ota_server.db.session import make_engine, make_session_factory
from ota_server.errors import InvalidInput
from ota_server.events import outbox
from ota_server.infra.bundle_store import BundleStore
from ota_server.infra.leases import RESIGN, SCHEDULER, Lease, LeasedJob, default_instance_id
from ota_server.infra.pki import LazyAuthority
from ota_server.mqtt.ingest import Ingestor
from ota_server.mqtt.link import ServerMqttLink, link_from_settings
from ota_server.mqtt.notices import NoticeDispatcher
from ota_server.mqtt.publisher import Publisher
from ota_server.regulator.scheduled_export import REPORT_EXPORT, ReportExporter
from ota_server.rollout.coordinator import Coordinator
from ota_server.services.campaign_fleet import CampaignFleet
from ota_server.services.owner_links import OwnerLinks, load_secret
from ota_server.services.repository import RepoReader
from ota_server.services.rollout_control import RolloutControl
from ota_server.services.webhook_delivery import WEBHOOKS, WebhookSender
from ota_server.signing import keys
from ota_server.signing.director import DIRECTOR_ONLINE_ROLES, Director
from ota_server.signing.freshness import Refresher
from ota_server.signing.image_repo import ImageRepository
from ota_server.signing.roots import ensure_root
from ota_server.signing.signing_pool import SigningPool
from ota_server.signing.store import DIRECTOR, IMAGE, REPO_WIDE, chain_versions

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    engine: Engine
    sessions: sessionmaker[Session]
    bundles: BundleStore
    image_repo: ImageRepository
    director: Director
    image_root: bytes
    director_root: bytes
    ingestor: Ingestor
    dispatcher: NoticeDispatcher
    link: ServerMqttLink | None
    pki: LazyAuthority
    coordinator: Coordinator  # runs the campaigns' ticks (the periodic job and ingest ask it)
    rollout: RolloutControl  # what the routes call to act on campaigns (never the coordinator itself)
    repo_reader: RepoReader
    owner_links: OwnerLinks
    refresher: Refresher | None = None
    webhooks: WebhookSender | None = None  # sends the outbox's events (its periodic run is a leased job)
    # Periodic jobs, each run by whichever replica holds its lease (ota_server.infra.leases).
    jobs: list[LeasedJob] = field(default_factory=list)

    @property
    def mqtt_url(self) -> str:
        """The broker URL cars are given (OTA_PUBLIC_MQTT_URL, else the server's own)."""
        return self.settings.public_mqtt_url or self.settings.mqtt_url or ""

    @property
    def repo_url(self) -> str:
        return self.settings.repo_url


def _prepare_storage(settings: Settings, clock: Clock) -> tuple[Engine, ImageRepository, Director, bytes, bytes]:
    """Blocking start-up work: schema upgrade, keys, repository roots."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    if settings.auto_migrate:
        upgrade(engine)
    else:
        require_current(engine)  # a deployment's migrate job owns the schema
    sessions = make_session_factory(engine)
    expiry = settings.expiry
    # Development keys are made only for a database without roots (no `ota keys init`).
    image_root = ensure_root(sessions, IMAGE, lambda: keys.image_signers(settings.keys_dir), expiry, clock())
    director_root = ensure_root(sessions, DIRECTOR, lambda: keys.director_signers(settings.keys_dir), expiry, clock())
    image_repo = ImageRepository(keys.RepoKeys(IMAGE, keys.Keyring([settings.keys_dir / "image"])), expiry)
    director_keys_dir = settings.keys_dir / "director"
    director_keys = keys.RepoKeys(DIRECTOR, keys.Keyring([director_keys_dir]), DIRECTOR_ONLINE_ROLES)
    with sessions() as session:  # refuse to start without the online keys the roots ask for
        director_keys.signers(session)
        if not image_repo.targets_offline(session):
            log.warning("the Image targets key is on this server (development keys): see `ota keys init`")
    _ensure_image_chain(sessions, image_repo, clock)
    processes = settings.director_signing_processes
    pool = SigningPool([director_keys_dir], processes) if processes else None
    director = Director(director_keys, expiry, signers_ttl_s=settings.repo_cache_ttl_s, pool=pool)
    return engine, image_repo, director, image_root, director_root


def _ensure_image_chain(sessions: sessionmaker[Session], image_repo: ImageRepository, clock: Clock) -> None:
    """Sign an empty targets chain on first start, so a TUF client can refresh before any release."""
    with sessions() as session, image_repo.lock:
        if chain_versions(session, IMAGE, REPO_WIDE).timestamp == 0:
            image_repo.publish(session, clock())
            try:
                session.commit()
            except IntegrityError:  # another replica signed it first
                session.rollback()


async def start_runtime(settings: Settings, clock: Clock, publisher: Publisher | None) -> Runtime:
    engine, image_repo, director, image_root, director_root = await asyncio.to_thread(_prepare_storage, settings, clock)
    sessions = make_session_factory(engine)
    outbox.install(sessions)  # campaign, approval and discrepancy events written in their own transactions
    ingestor = Ingestor(
        sessions,
        clock,
        batch_size=settings.ingest_batch_size,
        batch_wait_s=settings.ingest_batch_wait_s,
        max_payload_bytes=settings.ingest_max_payload_bytes,
        vin_rate_per_s=settings.ingest_vin_rate_per_s,
        vin_burst=settings.ingest_vin_burst,
        junk_rate_per_s=settings.ingest_junk_rate_per_s,
        junk_burst=settings.ingest_junk_burst,
        junk_total_rate_per_s=settings.ingest_junk_total_rate_per_s,
        junk_total_burst=settings.ingest_junk_total_burst,
    )
    ingestor.start()
    link = None
    if publisher is None:
        if not settings.mqtt_url:
            raise InvalidInput("no MQTT broker: set mqtt_url (OTA_MQTT_URL) or pass a publisher to create_app")
        link = link_from_settings(settings, ingestor.submit)
        await link.start(wait_s=10.0)
        if not link.connected:
            log.warning("MQTT broker %s not reachable yet; retrying in the background", settings.mqtt_url)
        publisher = link
    dispatcher = NoticeDispatcher(publisher, sessions, clock, concurrency=settings.notice_concurrency)
    owner_links = OwnerLinks(load_secret(settings.data_dir), settings.resolved_public_url)
    bundles = BundleStore(settings.bundles_dir, settings.max_upload_bytes)
    reader = RepoReader(engine, sessions, director, bundles, clock, ttl_s=settings.repo_cache_ttl_s)
    fleet = CampaignFleet(
        director,
        settings.repo_url,
        owner_links,
        carry_metadata=settings.notice_carries_metadata,
        image_metadata=reader.image if settings.notice_carries_image_metadata else None,
    )

    def prepare_launch(recall_id: int) -> int:
        with sessions() as session:
            recall = session.get(Recall, recall_id)
            return 0 if recall is None else fleet.prepare(session, recall, clock())

    coordinator = Coordinator(
        sessions,
        fleet,
        clock,
        dispatcher.dispatch,
        report_gap_s=settings.scheduler_report_gap_s,
        max_per_tick=settings.scheduler_max_per_tick,
    )
    ingestor.after_batch = coordinator.on_reports
    runtime = Runtime(
        settings=settings,
        clock=clock,
        engine=engine,
        sessions=sessions,
        bundles=bundles,
        image_repo=image_repo,
        director=director,
        image_root=image_root,
        director_root=director_root,
        ingestor=ingestor,
        dispatcher=dispatcher,
        link=link,
        pki=LazyAuthority(settings.ca_dir),
        coordinator=coordinator,
        rollout=RolloutControl(coordinator, dispatcher.dispatch, director, clock, prepare_launch),
        repo_reader=reader,
        owner_links=owner_links,
    )
    instance = settings.instance_id or default_instance_id()
    if settings.resign_interval_s > 0:
        refresher = runtime.refresher = Refresher(sessions, image_repo, clock)
        lease = Lease(sessions, RESIGN, instance, clock, settings.lease_ttl_s)
        runtime.jobs.append(LeasedJob(lease, settings.resign_interval_s, lambda: asyncio.to_thread(refresher.run_once)))
    resumed = await dispatcher.resume(settings.repo_url, owner_links)
    if resumed:
        log.info("re-publishing %d campaign notices not confirmed before the last stop", resumed)
    director.start()  # its signing processes, if any, ready before the first launch
    coordinator.start(0)  # ticks after launches and ingest batches here; the periodic tick is a leased job
    if settings.scheduler_interval_s > 0:
        lease = Lease(sessions, SCHEDULER, instance, clock, settings.lease_ttl_s)
        runtime.jobs.append(LeasedJob(lease, settings.scheduler_interval_s, coordinator.periodic_tick))
    if settings.report_export_dir is not None:
        exporter = ReportExporter(sessions, clock, settings.report_export_dir, settings.manufacturer_name)
        lease = Lease(sessions, REPORT_EXPORT, instance, clock, settings.lease_ttl_s)
        runtime.jobs.append(
            LeasedJob(lease, settings.report_export_interval_s, lambda: asyncio.to_thread(exporter.run_once))
        )
    sender = runtime.webhooks = WebhookSender(sessions, clock, timeout_s=settings.webhook_timeout_s)
    if settings.webhook_interval_s > 0:
        lease = Lease(sessions, WEBHOOKS, instance, clock, settings.lease_ttl_s)
        runtime.jobs.append(LeasedJob(lease, settings.webhook_interval_s, sender.run_once))
    for job in runtime.jobs:
        job.start()
    return runtime


async def stop_runtime(runtime: Runtime) -> None:
    """Finish publishing, stop listening, then store every report already received."""
    for job in runtime.jobs:  # hands the leases over to another replica at once
        await job.stop()
    if runtime.refresher is not None:
        await runtime.refresher.stop()
    runtime.ingestor.after_batch = None  # reports still arriving are stored; no more ticks
    await runtime.coordinator.stop()
    await runtime.dispatcher.close()
    if runtime.link is not None:
        await runtime.link.stop()
    await runtime.ingestor.stop()
    await runtime.rollout.preparations.wait(timeout_s=30.0)  # the signing processes stop after them
    await asyncio.to_thread(runtime.director.close)
    runtime.engine.dispose()
