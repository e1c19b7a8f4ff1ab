"""The MQTT topic scheme, spelled in one place.

Server to car: ``ota/v1/vehicles/{vin}/campaigns`` (retained, QoS 1).
Car to server: ``ota/v1/vehicles/{vin}/status`` (QoS 1: status reports and signed version
manifests, told apart by their ``kind``) and
``ota/v1/vehicles/{vin}/presence`` (retained; the Last-Will says offline).
"""

from __future__ import annotations

from firmware_bundles.errors import MalformedMessage

PREFIX = "ota/v1/vehicles"
STATUS_SUBSCRIPTION = f"{PREFIX}/+/status"
PRESENCE_SUBSCRIPTION = f"{PREFIX}/+/presence"
QOS = 1


def campaign_topic(vin: str) -> str:
    return f"{PREFIX}/{vin}/campaigns"


def status_topic(vin: str) -> str:
    return f"{PREFIX}/{vin}/status"


def presence_topic(vin: str) -> str:
    return f"{PREFIX}/{vin}/presence"


def vin_from_topic(topic: str) -> str:
    """The VIN segment of a vehicle topic; raises :class:`MalformedMessage` otherwise."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX or not parts[3]:
        raise MalformedMessage(f"not a vehicle topic: {topic!r}")
    return parts[3]
