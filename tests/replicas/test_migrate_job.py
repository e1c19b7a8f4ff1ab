"""With a migrate job owning the schema (OTA_AUTO_MIGRATE=0), a replica refuses an older database."""

from __future__ import annotations

from pathlib import Path

import pytest

from ota_server.config import Settings
from ota_server.db.migrate import require_current, upgrade
from ota_server.db.session import make_engine
from ota_server.errors import NotReady
from ota_server.mqtt.publisher import FakePublisher
from ota_server.runtime import start_runtime, stop_runtime
from tests.ota_server.helpers import FakeClock


def test_require_current_names_both_revisions(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    with pytest.raises(NotReady, match=r"at nothing, this server needs \d{4}"):
        require_current(engine)
    upgrade(engine, "0007")
    with pytest.raises(NotReady, match=r"at 0007, this server needs \d{4}: run `ota db upgrade`"):
        require_current(engine)
    upgrade(engine)
    require_current(engine)
    engine.dispose()


async def test_a_replica_without_auto_migrate_starts_only_on_an_upgraded_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, public_url="http://ota.test", auto_migrate=False, scheduler_interval_s=0)
    with pytest.raises(NotReady, match="ota db upgrade"):
        await start_runtime(settings, FakeClock(), FakePublisher())
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)  # what `ota db upgrade` (the compose migrate job) does
    engine.dispose()
    runtime = await start_runtime(settings, FakeClock(), FakePublisher())
    await stop_runtime(runtime)
