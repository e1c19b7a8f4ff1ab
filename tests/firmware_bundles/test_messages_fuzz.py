"""The MQTT payload parsers on hostile input: they answer with a message or MalformedMessage, nothing else."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from firmware_bundles.errors import MalformedMessage
from firmware_bundles.messages import (
    CampaignNotice,
    FailureReason,
    Presence,
    ReportState,
    StatusReport,
    encode,
    parse_notice,
    parse_presence,
    parse_report,
)

VIN = "1HGCM82633A004352"
WHEN = datetime(2026, 3, 1, tzinfo=UTC)
VALID: list[BaseModel] = [
    StatusReport(
        campaign_id=7,
        vin=VIN,
        nonce="n" * 32,
        state=ReportState.REMEDIED,
        installed_version="2.0.0",
        health_ok=True,
        sent_at=WHEN,
    ),
    StatusReport(
        campaign_id=7,
        vin=VIN,
        nonce="n" * 32,
        state=ReportState.FAILED,
        reason=FailureReason.HASH_MISMATCH,
        detail="x",
        sent_at=WHEN,
    ),
    CampaignNotice(
        campaign_id=7,
        vin=VIN,
        nonce="n" * 32,
        recall_number="24V-123",
        title="t",
        repo_url="http://ota.test/repo",
        issued_at=WHEN,
    ),
    Presence(vin=VIN, online=True, agent_version="1"),
]
PARSERS: list[Callable[[bytes], BaseModel]] = [parse_report, parse_notice, parse_presence]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def parses_or_refuses(payload: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(MalformedMessage):  # anything else fails the test
            parse(payload)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(payload: bytes) -> None:
    parses_or_refuses(payload)


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_byte_level_mutations_of_valid_messages(message: BaseModel, data: st.DataObject) -> None:
    payload = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 5))):
        where = data.draw(st.integers(0, len(payload)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and where < len(payload):
            payload[where] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            payload[where:where] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del payload[where : where + data.draw(st.integers(1, 8))]
        else:
            del payload[where:]
    parses_or_refuses(bytes(payload))


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_field_level_mutations_of_valid_messages(message: BaseModel, data: st.DataObject) -> None:
    doc: dict[str, Any] = json.loads(encode(message))
    key = data.draw(st.sampled_from([*doc, "unexpected"]))
    if data.draw(st.booleans()):
        doc[key] = data.draw(json_values)
    else:
        doc.pop(key, None)
    parses_or_refuses(json.dumps(doc, allow_nan=True).encode())


@FUZZ
@given(st.text(max_size=64))
def test_oversized_and_odd_encodings(filler: str) -> None:
    doc = json.loads(encode(VALID[0])) | {"detail": filler * 2000}
    parses_or_refuses(json.dumps(doc).encode())
    parses_or_refuses(json.dumps(doc).encode("utf-16"))
