"""The scheduled export: every active recall's reports written into a directory, with no one clicking.

:meth:`ReportExporter.run_once` writes, for each recall whose remedy campaign was running in the
period, each report kind in every format (CSV, JSON, PDF) of the last *full* period: the ISO
week before the current one for the weekly kinds (vin-status, notices, population,
type-approval), the quarter before the current one for the completion report. Files are named
by recall, period and kind::

    <dir>/<recall number>/<period>/<recall number>_<period>_<kind>.<format>

A file already there is left alone, so a run writes only what is due: the job can run as often
as it likes, on whichever replica holds its lease (``report-export``, see
:mod:`ota_server.infra.leases`), and a restart or a lease handed over between replicas writes
nothing twice. Each file is written to a temporary name in the same directory and renamed into
place, so a reader never sees half a report. The submitter is ``scheduled export``; the date
is the export's.

Each recall and period written is a ``report.ready`` event (``ota_server.events``), committed
once its files are in place: a crash between the files and that commit loses the event (the
files are there, so the next run writes nothing and tells nothing).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.db.models import Campaign, Recall
from ota_server.domain.states import CampaignKind, CampaignStatus
from ota_server.events import outbox
from ota_server.regulator import FORMATS, Issuer, Kind, build, render
from ota_server.regulator.common import Period, last_full_quarter, last_full_week

log = logging.getLogger(__name__)

REPORT_EXPORT = "report-export"  # the lease's name
SUBMITTER = "scheduled export"
WEEKLY: tuple[Kind, ...] = ("vin-status", "notices", "population", "type-approval")
QUARTERLY: tuple[Kind, ...] = ("completion",)
_ENDED = (CampaignStatus.CANCELLED.value, CampaignStatus.COMPLETED.value)


@dataclass(frozen=True)
class Due:
    """One report file to write."""

    recall_id: int
    recall_number: str
    kind: Kind
    period: Period
    fmt: str

    def path(self, directory: Path) -> Path:
        number = self.recall_number.replace("/", "_")
        return directory / number / self.period.label / f"{number}_{self.period.label}_{self.kind}.{self.fmt}"


def write_atomically(path: Path, body: bytes) -> None:
    """``body`` at ``path``, whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ReportExporter:
    """Writes the due report files of every recall running in the last full week and quarter."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock, directory: Path, manufacturer: str) -> None:
        self._sessions = sessions
        self._clock = clock
        self.directory = directory
        self._manufacturer = manufacturer

    def due(self, session: Session, now: datetime) -> Iterator[Due]:
        for kinds, period in ((WEEKLY, last_full_week(now)), (QUARTERLY, last_full_quarter(now))):
            for recall_id, number in _running_in(session, period):
                for kind in kinds:
                    for fmt in FORMATS:
                        item = Due(recall_id, number, kind, period, fmt)
                        if not item.path(self.directory).exists():
                            yield item

    def run_once(self) -> list[Path]:
        """Write every due file (blocking: call from a worker thread); the paths written."""
        now = self._clock()
        issuer = Issuer(self._manufacturer, SUBMITTER)
        written: list[Path] = []
        ready: dict[tuple[int, str, str], list[str]] = {}
        with self._sessions() as session:
            for item in list(self.due(session, now)):
                label = item.period.label
                by_period = {"quarter": label} if item.kind == "completion" else {"week": label}
                report = build(session, item.kind, item.recall_id, now, issuer, **by_period)
                body, _ = render(report, item.fmt)
                path = item.path(self.directory)
                write_atomically(path, body)
                written.append(path)
                ready.setdefault((item.recall_id, item.recall_number, label), []).append(path.name)
            for (recall_id, number, label), names in ready.items():
                outbox.report_ready(session, recall_id, number, label, names, now)
            session.commit()
        if written:
            log.info("scheduled export: wrote %d report files into %s", len(written), self.directory)
        return written


def _running_in(session: Session, period: Period) -> list[tuple[int, str]]:
    """(recall id, number) of each recall whose remedy campaign was launched before the period's
    end and had not ended before its start."""
    query = (
        select(Recall.id, Recall.campaign_number, Campaign.status, Campaign.status_changed_at)
        .join(Campaign, Campaign.recall_id == Recall.id)
        .where(Campaign.kind == CampaignKind.REMEDY.value, Campaign.launched_at < period.end)
        .order_by(Recall.id)
    )
    return [
        (recall_id, number)
        for recall_id, number, status, changed_at in session.execute(query).all()
        if not (status in _ENDED and changed_at is not None and changed_at < period.start)
    ]
