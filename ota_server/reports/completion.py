"""The quarterly completion report of one recall: where its cars stood at the quarter's end.

Every car involved is in exactly one bucket, so the buckets add up to ``involved``:
remedied over the air, remedied at a dealer, inspected and not needed, unreachable (by
reason), failed (failed, rolled back or timed out, awaiting a retry or a dealer), declined,
withdrawn (campaign cancelled) and still open (not yet notified, notified, installing).
``*_in_quarter`` counts the remedies recorded during the quarter itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ota_server.reports.common import Report, launched_campaign, quarter, recall_meta, recall_of, standings
from ota_server.rollout.states import ERRORS, UnreachableReason, VinState

COLUMNS = ("measure", "count")
_BUCKETS = {
    VinState.REMEDIED.value: "remedied_ota",
    VinState.REMEDIED_AT_DEALER.value: "remedied_at_dealer",
    VinState.INSPECTED_NOT_NEEDED.value: "inspected_not_needed",
    VinState.DECLINED.value: "declined",
    VinState.WITHDRAWN.value: "withdrawn",
    **{state.value: "failed" for state in ERRORS},
}
_REMEDIES = ("remedied_ota", "remedied_at_dealer", "inspected_not_needed")


def build(session: Session, recall_id: int, now: datetime, quarter_label: str | None = None) -> Report:
    recall = recall_of(session, recall_id)
    campaign = launched_campaign(session, recall)
    period = quarter(quarter_label, now)
    cars = standings(session, campaign, period.end)
    counts = dict.fromkeys(("remedied_ota", "remedied_at_dealer", "inspected_not_needed"), 0)
    in_quarter = dict.fromkeys(_REMEDIES, 0)
    unreachable = {reason.value: 0 for reason in UnreachableReason}
    rest = {"failed": 0, "declined": 0, "withdrawn": 0, "open": 0}
    for car in cars:
        if car.state == VinState.UNREACHABLE.value:
            reason = car.reason if car.reason in unreachable else UnreachableReason.OTHER.value
            unreachable[reason] += 1
            continue
        bucket = _BUCKETS.get(car.state, "open")
        if bucket in counts:
            counts[bucket] += 1
            if car.since is not None and period.start <= car.since < period.end:
                in_quarter[bucket] += 1
        else:
            rest[bucket] += 1
    summary: dict[str, Any] = {
        "involved": len(cars),
        **counts,
        "unreachable": sum(unreachable.values()),
        "unreachable_by_reason": unreachable,
        **rest,
        "remedied_in_quarter": {name: in_quarter[name] for name in _REMEDIES},
        "completion_rate": round(sum(counts.values()) / len(cars), 4) if cars else 0.0,
    }
    rows: list[dict[str, Any]] = [{"measure": "involved", "count": len(cars)}]
    rows += [{"measure": name, "count": n} for name, n in counts.items()]
    rows += [{"measure": f"unreachable_{reason}", "count": n} for reason, n in unreachable.items()]
    rows += [{"measure": name, "count": n} for name, n in rest.items()]
    rows += [{"measure": f"{name}_in_quarter", "count": n} for name, n in in_quarter.items()]
    meta = {
        **recall_meta(recall, campaign, now),
        "quarter": period.label,
        "period_start": period.start.isoformat(),
        "period_end": period.end.isoformat(),
    }
    return Report("completion", meta, COLUMNS, rows, summary)
