"""Regulator and operator reports, generated from the data (one small module per report).

Each ``build`` returns a :class:`~ota_server.regulator.common.RegulatorReport`, rendered as CSV, JSON or
PDF (:mod:`ota_server.regulator.pdf`: the completion report as a one-page summary, the others as
their header, summary and table). The audit log has
its own export (``GET /api/v1/audit/export``, admin only).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from sqlalchemy.orm import Session

from ota_server.errors import InvalidInput
from ota_server.regulator import completion, notices, population, type_approval, vin_status
from ota_server.regulator.common import Issuer, RegulatorReport

Kind = Literal["population", "completion", "vin-status", "notices", "type-approval"]
Format = Literal["csv", "json", "pdf"]  # every kind in every format
KINDS: tuple[Kind, ...] = get_args(Kind)
FORMATS: tuple[Format, ...] = get_args(Format)


def build(
    session: Session,
    kind: str,
    recall_id: int,
    now: datetime,
    issuer: Issuer,
    *,
    quarter: str | None = None,
    week: str | None = None,
) -> RegulatorReport:
    """One recall's report of ``kind``, headed by the manufacturer, the submitter and the date."""
    report = _build(session, kind, recall_id, now, quarter=quarter, week=week)
    report.meta = {**issuer.meta(now), **report.meta}
    return report


def _build(
    session: Session,
    kind: str,
    recall_id: int,
    now: datetime,
    *,
    quarter: str | None = None,
    week: str | None = None,
) -> RegulatorReport:
    if kind == "population":
        return population.build(session, recall_id, now)
    if kind == "completion":
        return completion.build(session, recall_id, now, quarter)
    if kind == "vin-status":
        return vin_status.build(session, recall_id, now, week)
    if kind == "notices":
        return notices.build(session, recall_id, now)
    if kind == "type-approval":
        return type_approval.build(session, recall_id, now)
    raise InvalidInput(f"unknown report {kind!r}: one of {', '.join(KINDS)}")


def render(report: RegulatorReport, fmt: str) -> tuple[bytes, str]:
    """The report's bytes and media type in ``fmt`` (csv, json or pdf)."""
    import json

    if fmt == "csv":
        return report.to_csv().encode(), "text/csv; charset=utf-8"
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2).encode(), "application/json"
    if fmt == "pdf":
        from ota_server.regulator.pdf import report_pdf

        return report_pdf(report), "application/pdf"
    raise InvalidInput(f"format {fmt!r}: one of {', '.join(FORMATS)}")


__all__ = ["FORMATS", "KINDS", "Format", "Issuer", "Kind", "RegulatorReport", "build", "render"]
