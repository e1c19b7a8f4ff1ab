from datetime import UTC, datetime

import pytest

from firmware_bundles import topics
from firmware_bundles.errors import MalformedMessage
from firmware_bundles.messages import (
    MAX_BATCH_REPORTS,
    FailureReason,
    ReportBatch,
    ReportSignature,
    ReportState,
    StatusReport,
    encode,
    parse_notice,
    parse_report,
    parse_status_message,
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


def _batch(*steps: StatusReport, vin: str = VIN) -> ReportBatch:
    return ReportBatch(vin=vin, reports=steps, sent_at=datetime.now(UTC))


def test_report_batch_roundtrip_keeps_the_steps_in_order() -> None:
    steps = (report(state=ReportState.NOTIFIED), report(state=ReportState.DOWNLOADING))
    message = parse_status_message(encode(_batch(*steps)))
    assert isinstance(message, ReportBatch)
    assert [r.state for r in message.reports] == [ReportState.NOTIFIED, ReportState.DOWNLOADING]


def test_a_single_report_and_a_manifest_still_parse_as_themselves() -> None:
    assert isinstance(parse_status_message(encode(report())), StatusReport)


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ((report(vin="1HGCM82633A004353"),), "not the batch's VIN"),
        ((report(state=ReportState.FAILED),), "needs a reason"),
        (
            (report(signature=ReportSignature(keyid="a" * 64, sig="ab")),),
            "signed by the batch",
        ),
    ],
)
def test_a_batch_with_a_step_it_cannot_carry_is_malformed(steps: tuple[StatusReport, ...], words: str) -> None:
    with pytest.raises(MalformedMessage, match=words):
        parse_status_message(encode(_batch(*steps)))


def test_an_empty_or_oversized_batch_is_malformed() -> None:
    step = report()
    empty = encode(_batch(step)).replace(encode(step), b"")
    assert b'"reports":[]' in empty
    with pytest.raises(MalformedMessage):
        parse_status_message(empty)
    payload = encode(_batch(*[report()] * MAX_BATCH_REPORTS)).replace(
        b'"reports":[', b'"reports":[' + encode(report()) + b","
    )
    with pytest.raises(MalformedMessage, match="reports"):
        parse_status_message(payload)


def _kind_last(payload: bytes) -> bytes:
    """A batch's bytes with its ``kind`` moved from the front to the end (JSON has no field order)."""
    kind = b'"kind":"status_batch",'
    assert payload.count(kind) == 1
    return payload.replace(kind, b"")[:-1] + b"," + kind[:-1] + b"}"


def test_a_message_is_told_apart_by_its_kind_wherever_the_field_sits() -> None:
    """Before: a byte search in the first 4 KiB for ``"status_batch"``/``"manifest"`` chose the type, so a
    batch whose ``kind`` came after 4 KiB was refused as a malformed report, and a report whose detail
    was the word ``manifest`` as a malformed manifest."""
    steps = (report(state=ReportState.FAILED, reason=FailureReason.HASH_MISMATCH, detail="d" * 1000),) * 5
    batch = _batch(*steps)
    payload = encode(batch)
    late = _kind_last(payload)
    assert late.index(b'"status_batch"') > 4096
    assert parse_status_message(late) == batch
    worded = report(state=ReportState.FAILED, reason=FailureReason.HASH_MISMATCH, detail='"manifest"')
    assert parse_status_message(encode(worded)) == worded
    plain = report(detail="manifest")
    assert parse_status_message(encode(plain).replace(b'"kind":"status",', b"")) == plain  # kind may be left out


def test_a_refusal_names_the_kind_the_message_claims() -> None:
    steps = tuple(report(detail="d" * 1000) for _ in range(5))
    late = _kind_last(encode(_batch(*steps)))[:-1] + b',"extra":1}'
    with pytest.raises(MalformedMessage, match=r"^ReportBatch: extra: "):
        parse_status_message(late)
    with pytest.raises(MalformedMessage, match=r"^VersionManifest: "):
        parse_status_message(b'{"kind":"manifest","vin":"' + VIN.encode() + b'"}')
    with pytest.raises(MalformedMessage, match="kind"):
        parse_status_message(b'{"kind":"presence","vin":"' + VIN.encode() + b'"}')
