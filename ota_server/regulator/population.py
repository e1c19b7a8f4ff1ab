"""Population details for the regulator's recall report (Part 573 style).

Per make, model and model year: the VIN range, the production-date range and the count, over
the population frozen into the recall's remedy campaign at launch (plus cars a dynamic campaign
took in later), with the recall's filter as filed. First and last are in VIN order
(``firmware_bundles.vin.vin_order``: the check digit not compared), the order a recall's range uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from firmware_bundles.vin import vin_from_order, vin_order
from ota_server.db.models import CampaignVehicle, Vehicle
from ota_server.regulator.common import RegulatorReport, launched_campaign, recall_meta, recall_of
from ota_server.services.group_filter import vin_order_sql

COLUMNS = (
    "make",
    "model",
    "model_year",
    "vin_first",
    "vin_last",
    "production_date_first",
    "production_date_last",
    "count",
)


def build(session: Session, recall_id: int, now: datetime) -> RegulatorReport:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    # the VIN order key with position 9 after it (a tie breaker), turned back into the VIN below
    ordered = vin_order_sql(Vehicle.vin).concat(func.substr(Vehicle.vin, 9, 1))
    query = (
        select(
            Vehicle.make,
            Vehicle.model,
            Vehicle.model_year,
            func.min(ordered),
            func.max(ordered),
            func.min(Vehicle.production_date),
            func.max(Vehicle.production_date),
            func.count(),
        )
        .join(CampaignVehicle, CampaignVehicle.vin == Vehicle.vin)
        .where(CampaignVehicle.campaign_id == campaign.id)
        .group_by(Vehicle.make, Vehicle.model, Vehicle.model_year)
        .order_by(Vehicle.make, Vehicle.model, Vehicle.model_year)
    )
    rows: list[dict[str, Any]] = [
        {
            "make": make or "",
            "model": model,
            "model_year": year,
            "vin_first": vin_from_order(first),
            "vin_last": vin_from_order(last),
            "production_date_first": produced_first.isoformat(),
            "production_date_last": produced_last.isoformat(),
            "count": count,
        }
        for make, model, year, first, last, produced_first, produced_last, count in session.execute(query)
    ]
    years = [row["model_year"] for row in rows]
    summary = {
        "total": sum(row["count"] for row in rows),
        "campaign_population": campaign.population,
        "makes": sorted({row["make"] for row in rows}),
        "models": sorted({row["model"] for row in rows}),
        "model_years": {"min": min(years), "max": max(years)} if years else None,
        "vin_range": {
            "first": min((r["vin_first"] for r in rows), key=vin_order),
            "last": max((r["vin_last"] for r in rows), key=vin_order),
        }
        if rows
        else None,
        "production_dates": {
            "first": min(r["production_date_first"] for r in rows),
            "last": max(r["production_date_last"] for r in rows),
        }
        if rows
        else None,
        "criteria": recall.population,
    }
    return RegulatorReport("population", recall_meta(recall, campaign, now), COLUMNS, rows, summary)
