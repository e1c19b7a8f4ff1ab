"""Report signatures: canonical JSON over the report without its signature, ed25519 keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from securesystemslib.formats import encode_canonical

from firmware_bundles.errors import UnverifiedReport
from firmware_bundles.messages import (
    ReportBatch,
    ReportState,
    StatusReport,
    encode,
    parse_report,
    parse_report_batch,
    parse_status_message,
)
from firmware_bundles.report_signing import (
    generate_report_key,
    load_report_signer,
    private_key_pem,
    public_key,
    sign_report,
    signed_bytes,
    verify_report,
)
from firmware_bundles.vin import make_vin

VIN = make_vin("1HG", "CM826", "N", "A", 1)


def _report(**changes: object) -> StatusReport:
    fields: dict[str, object] = {
        "campaign_id": 3,
        "vin": VIN,
        "nonce": "n" * 24,
        "state": ReportState.DOWNLOADING,
        "sent_at": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    }
    return StatusReport.model_validate({**fields, **changes})


def test_a_signed_report_verifies_after_the_wire_round_trip() -> None:
    signer = generate_report_key()
    signed = sign_report(_report(), signer)
    received = parse_report(encode(signed))
    assert received.signature is not None and received.signature.keyid == signer.public_key.keyid
    verify_report(received, signer.public_key)


def test_the_signature_does_not_depend_on_json_layout() -> None:
    signer = generate_report_key()
    body = json.loads(encode(sign_report(_report(), signer)))
    shuffled = json.dumps(dict(reversed(list(body.items()))), indent=3).encode()
    verify_report(parse_report(shuffled), signer.public_key)


@pytest.mark.parametrize(
    "field, value",
    [("state", "remedied"), ("nonce", "m" * 24), ("campaign_id", 4), ("attempt", 2), ("detail", "x")],
)
def test_any_changed_field_breaks_the_signature(field: str, value: object) -> None:
    signer = generate_report_key()
    body = json.loads(encode(sign_report(_report(), signer)))
    body[field] = value
    with pytest.raises(UnverifiedReport, match="does not verify"):
        verify_report(parse_report(json.dumps(body).encode()), signer.public_key)


def test_unsigned_and_foreign_key_reports_are_refused() -> None:
    mine, theirs = generate_report_key(), generate_report_key()
    with pytest.raises(UnverifiedReport, match="not signed"):
        verify_report(_report(), mine.public_key)
    with pytest.raises(UnverifiedReport, match="expected"):
        verify_report(sign_report(_report(), theirs), mine.public_key)


def test_keys_survive_storage() -> None:
    signer = generate_report_key()
    again = load_report_signer(private_key_pem(signer))
    stored = public_key(signer.public_key.keyid, signer.public_key.to_dict())
    verify_report(sign_report(_report(), again), stored)
    with pytest.raises(ValueError):
        load_report_signer(b"not a key")


def test_a_signed_batch_verifies_and_any_changed_step_breaks_it() -> None:
    signer = generate_report_key()
    batch = ReportBatch(vin=VIN, reports=(_report(state=ReportState.NOTIFIED), _report()), sent_at=datetime.now(UTC))
    signed = sign_report(batch, signer)
    received = parse_status_message(encode(signed))
    assert isinstance(received, ReportBatch)
    verify_report(received, signer.public_key)
    moved = encode(signed).replace(b'"downloading"', b'"remedied"')
    with pytest.raises(UnverifiedReport):
        verify_report(parse_report_batch(moved), signer.public_key)


@pytest.mark.parametrize(
    "detail",
    [
        "",
        "health check: brake controller silent",
        'quote " and back\\slash',
        "Bremssteuergerät stumm",
        "tab\tnew\nline",
    ],
)
def test_the_signed_bytes_are_securesystemslibs_canonical_json(detail: str) -> None:
    report = _report(detail=detail, state=ReportState.FAILED, reason="hash_mismatch")
    batch = ReportBatch(vin=VIN, reports=(report, _report()), sent_at=datetime.now(UTC))
    for message in (report, batch):
        body = message.model_dump(mode="json", exclude_none=True, exclude={"signature"})
        expected = encode_canonical(body)
        assert expected is not None
        assert signed_bytes(message) == expected.encode()
