"""PUBACKs read without paho's general decoder: half the server's CPU for publishing a launch's notices.

paho (2.x) decodes every PUBACK through the decoder it shares with every acknowledgement packet:
two ``ReasonCode`` objects and a ``Properties`` object (a table of every MQTT v5 property name)
for each, whatever the packet holds, and a debug log line. A broker answers almost every QoS 1
publish with one of three short shapes (MQTT v5, 3.4.2): the message id alone (success), the
id and a reason code, or those and an empty property length. Publishing 30,000 notices of
5 KB through :meth:`ServerMqttLink.publish_many <ota_server.mqtt.link.ServerMqttLink.publish_many>`
into an idle Mosquitto took 1.00-1.06 s of the server's CPU, 0.56-0.59 s with these read here: during
a launch the server's event loop gets about half a core, so that is most of a second of the
notices' window (issue 19).

:func:`read_pubacks_lean` replaces one paho client's PUBACK handler with one that reads those
three shapes itself and hands paho exactly what its own decoder would: the message id, a
``ReasonCode`` of the same value (one kept per value: nothing here or in aiomqtt changes it) and
empty properties. Everything else (a PUBACK with properties, a malformed one, a PUBCOMP) goes
to paho's own handler unchanged, so paho still judges what it must refuse. paho's internals
are reached by name; a paho without them keeps its own handler (logged once).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Literal

from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt import client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

MQTT_V5 = 5
# What the handler reads of paho: the packet being handled, the messages waiting for their
# acknowledgement (under their lock) and the call that completes one, as paho's own handler does.
_PAHO_PARTS = ("_handle_pubackcomp", "_in_packet", "_out_message_mutex", "_out_messages", "_do_on_publish")
_warned = False

Handler = Callable[[Literal["PUBACK", "PUBCOMP"]], MQTTErrorCode]


@functools.cache
def _reason(value: int) -> ReasonCode | None:
    """The PUBACK ``ReasonCode`` of ``value``, one per value (nothing here or in aiomqtt changes it); None
    for a value paho would not take in a PUBACK (its own handler then judges the packet)."""
    try:
        return ReasonCode(PacketTypes.PUBACK, identifier=value)
    except (KeyError, ValueError):
        return None


def short_puback(packet: bytes | bytearray, version: int) -> tuple[int, int] | None:
    """(message id, reason code) of a PUBACK in one of the short shapes ``version`` allows, else None.

    v5: the id alone (reason 0, success), the id and a reason, or those and a property length of
    zero. MQTT 3.1.1: the id alone.
    """
    size = len(packet)
    if size == 2:
        return (packet[0] << 8) | packet[1], 0
    if version != MQTT_V5 or size > 4 or size < 2 or (size == 4 and packet[3] != 0):
        return None
    return (packet[0] << 8) | packet[1], packet[2]


def read_pubacks_lean(paho: mqtt.Client, version: int) -> bool:
    """Read ``paho``'s PUBACKs in their short shapes here (see the module); False when this paho
    lacks what the handler needs, and it keeps its own."""
    global _warned
    if not all(hasattr(paho, part) for part in _PAHO_PARTS):
        if not _warned:
            _warned = True
            log.info("paho %s reads its PUBACKs itself: its internals differ from 2.x's", PAHO_VERSION)
        return False
    own: Handler = paho._handle_pubackcomp
    empty = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

    def handle(cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        short = short_puback(paho._in_packet["packet"], version) if cmd == "PUBACK" else None
        reason = None if short is None else _reason(short[1])
        if short is None or reason is None:
            return own(cmd)
        mid = short[0]
        with paho._out_message_mutex:
            if mid in paho._out_messages:
                return paho._do_on_publish(mid, reason, empty)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho._handle_pubackcomp = handle  # type: ignore[method-assign]
    return True
