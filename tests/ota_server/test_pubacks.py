"""The server's PUBACKs read in their short shapes without paho's general decoder (issue 19).

Whatever the shape, the publish callback must hear exactly what paho's own handler tells it (the
message id, the reason code, the properties), the message must be completed as paho completes
it, and anything not in a short shape must reach paho's own handler. A broker's refusal read
through this path is covered against a real Mosquitto by
``tests/replicas/test_notice_batches.py`` (a message the broker refuses is not counted as
published).
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ota_server.mqtt.link import MQTT_V5, MQTT_V311
from ota_server.mqtt.pubacks import read_pubacks_lean, short_puback

Heard = tuple[int, int, str, bool, str]  # mid, reason value, reason name, is_failure, properties


def _client(version: int) -> tuple[mqtt.Client, list[Heard], int]:
    """A paho client (never connected) with one QoS 1 publish waiting for its PUBACK, what its publish
    callback hears, and that publish's message id."""
    protocol = mqtt.MQTTv5 if version == MQTT_V5 else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ota-test", protocol=protocol)
    heard: list[Heard] = []

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, props: Properties) -> None:
        heard.append((mid, reason.value, str(reason), reason.is_failure, str(props)))

    client.on_publish = on_publish
    info = client.publish("ota/test", b"notice", qos=1)
    assert info.mid in client._out_messages  # kept until acknowledged, connected or not
    return client, heard, info.mid


def _handle(client: mqtt.Client, body: bytes, cmd: Literal["PUBACK", "PUBCOMP"] = "PUBACK") -> Any:
    client._in_packet["command"] = 0x40 if cmd == "PUBACK" else 0x70
    client._in_packet["packet"] = bytearray(body)
    try:
        return client._handle_pubackcomp(cmd)
    except Exception as exc:  # paho's judgement of a bad packet, compared as it is
        return type(exc).__name__


def _both(version: int, tail: bytes, cmd: Literal["PUBACK", "PUBCOMP"] = "PUBACK") -> tuple[Any, Any]:
    """The same acknowledgement (the waiting message's id, then ``tail``) through paho's own handler
    and the lean one: what each returned, what the callback heard, and whether the message was done."""
    results = []
    for lean in (False, True):
        client, heard, mid = _client(version)
        if lean:
            assert read_pubacks_lean(client, version)
        returned = _handle(client, bytes([mid >> 8, mid & 0xFF]) + tail, cmd)
        results.append((returned, heard, mid in client._out_messages))
    return results[0], results[1]


SHAPES = [
    pytest.param(MQTT_V5, b"", id="v5 success: the id alone"),
    pytest.param(MQTT_V5, b"\x00", id="v5 success with its reason"),
    pytest.param(MQTT_V5, b"\x00\x00", id="v5 success, empty properties"),
    pytest.param(MQTT_V5, b"\x10", id="v5 no matching subscribers"),
    pytest.param(MQTT_V5, b"\x87", id="v5 refused: not authorized"),
    pytest.param(MQTT_V5, b"\x97\x00", id="v5 refused: quota exceeded, empty properties"),
    pytest.param(MQTT_V5, b"\x87\x05\x1f\x00\x02no", id="v5 refused with a reason string (paho's own)"),
    pytest.param(MQTT_V5, b"\x87\x01", id="v5 property length without the property (paho's own)"),
    pytest.param(MQTT_V5, b"\x8f", id="v5 a reason code no PUBACK has (paho's own)"),
    pytest.param(MQTT_V311, b"", id="3.1.1 the id alone"),
    pytest.param(MQTT_V311, b"\x00", id="3.1.1 too long (paho's own)"),
]


@pytest.mark.parametrize(("version", "tail"), SHAPES)
def test_the_callback_hears_what_pahos_own_handler_tells_it(version: int, tail: bytes) -> None:
    own, lean = _both(version, tail)
    assert lean == own
    returned, heard, waiting = own
    assert heard or isinstance(returned, str)  # each shape is either heard or refused by paho: no vacuous case
    assert waiting != bool(heard)


def test_a_pubcomp_goes_to_pahos_own_handler() -> None:
    own, lean = _both(MQTT_V5, b"", "PUBCOMP")
    assert lean == own


def test_an_acknowledgement_of_a_message_no_longer_waiting_is_ignored() -> None:
    client, heard, mid = _client(MQTT_V5)
    assert read_pubacks_lean(client, MQTT_V5)
    ack = bytes([mid >> 8, mid & 0xFF])
    assert _handle(client, ack) == mqtt.MQTT_ERR_SUCCESS
    assert _handle(client, ack) == mqtt.MQTT_ERR_SUCCESS  # a duplicate: nothing left to complete
    assert [h[0] for h in heard] == [mid]


def test_the_short_shapes_build_no_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    """paho's decoder built a Properties (every v5 property name) and two ReasonCodes per PUBACK:
    ~15 us each, half of publishing a launch's notices."""
    built = 0
    init = Properties.__init__

    def counted(self: Properties, packet_type: int) -> None:
        nonlocal built
        built += 1
        init(self, packet_type)  # type: ignore[no-untyped-call]

    clients = [_client(MQTT_V5) for _ in range(3)]
    for client, _, _ in clients:
        assert read_pubacks_lean(client, MQTT_V5)
    monkeypatch.setattr(Properties, "__init__", counted)
    for (client, heard, mid), tail in zip(clients, (b"", b"\x10", b"\x00\x00"), strict=True):
        _handle(client, bytes([mid >> 8, mid & 0xFF]) + tail)
        assert heard
    assert built == 0


def test_short_shapes() -> None:
    assert short_puback(b"\x01\x02", MQTT_V5) == (0x0102, 0)
    assert short_puback(b"\x01\x02\x87", MQTT_V5) == (0x0102, 0x87)
    assert short_puback(b"\x01\x02\x87\x00", MQTT_V5) == (0x0102, 0x87)
    assert short_puback(b"\x01\x02\x87\x01", MQTT_V5) is None
    assert short_puback(b"\x01\x02\x87\x00\x00", MQTT_V5) is None
    assert short_puback(b"\x01", MQTT_V5) is None
    assert short_puback(b"\x01\x02", MQTT_V311) == (0x0102, 0)
    assert short_puback(b"\x01\x02\x00", MQTT_V311) is None


def test_a_paho_without_the_parts_keeps_its_own_handler() -> None:
    class Other:
        def _handle_pubackcomp(self, cmd: str) -> int:
            return 0

    other = Other()
    assert not read_pubacks_lean(other, MQTT_V5)  # type: ignore[arg-type]
    assert other._handle_pubackcomp.__func__ is Other._handle_pubackcomp  # type: ignore[attr-defined]
