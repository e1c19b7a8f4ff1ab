from datetime import UTC, datetime

import pytest

from firmware_bundles import topics
from firmware_bundles.errors import MalformedMessage
from firmware_bundles.messages import (
    FailureReason,
    ReportState,
    StatusReport,
    encode,
    parse_notice,
    parse_report,
)

VIN = "1HGCM82633A004352"


def report(**kw: object) -> StatusReport:
    base: dict[str, object] = {
        "campaign_id": 1,
        "vin": VIN,
        "nonce": "n" * 32,
        "state": ReportState.NOTIFIED,
        "sent_at": datetime.now(UTC),
    }
    base.update(kw)
    return StatusReport.model_validate(base)


def test_report_roundtrip() -> None:
    msg = report(state=ReportState.FAILED, reason=FailureReason.HASH_MISMATCH)
    assert parse_report(encode(msg)) == msg


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{not json",
        b'{"schema_version": 2}',
        encode(report()).replace(b'"notified"', b'"exploded"'),
        encode(report()).replace(b"}", b', "extra": 1}'),
        b"x" * 20_000,
    ],
)
def test_malformed_reports_are_rejected(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_report(payload)


def test_failed_needs_reason() -> None:
    with pytest.raises(MalformedMessage, match="reason"):
        parse_report(encode(report(state=ReportState.FAILED)))


def test_notice_rejects_bad_vin() -> None:
    with pytest.raises(MalformedMessage):
        parse_notice(b'{"campaign_id":1,"vin":"SHORT","nonce":"' + b"n" * 20 + b'"}')


def test_state_ranks_are_ordered() -> None:
    assert ReportState.NOTIFIED.rank < ReportState.INSTALLING.rank < ReportState.REMEDIED.rank
    assert ReportState.FAILED.rank == ReportState.REMEDIED.rank and ReportState.FAILED.terminal


def test_topics_roundtrip() -> None:
    assert topics.vin_from_topic(topics.status_topic(VIN)) == VIN
    with pytest.raises(MalformedMessage):
        topics.vin_from_topic("ota/v1/vehicles//status")
