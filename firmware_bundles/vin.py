"""VIN validation (ISO 3779) and generation for tests and the simulator.

Position 9 is a check digit only in some regions (North America, China); European
VINs such as ``WVWZZZ...`` carry none, so the digit is enforced only where it applies.
"""

from __future__ import annotations

import re

from firmware_bundles.errors import InvalidVin

_VIN_RE = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
_TRANSLIT = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
# First WMI character of regions whose VINs carry a check digit in position 9:
# 1-5 North America, L mainland China.
_CHECK_DIGIT_REGIONS = frozenset("12345L")


def check_digit(vin: str) -> str:
    """The position-9 check digit ('0'-'9' or 'X') a VIN must carry where it applies."""
    total = sum(_TRANSLIT[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
    rest = total % 11
    return "X" if rest == 10 else str(rest)


def check_digit_applies(vin: str) -> bool:
    return vin[:1] in _CHECK_DIGIT_REGIONS


def normalize_vin(raw: str) -> str:
    """A VIN as it is stored and compared: white space around it removed, upper case; nothing checked.

    The one spelling of this rule for every entry point (API path and body, CSV import, CLI,
    pages); :func:`validate_vin` applies it before checking.
    """
    return raw.strip().upper()


def validate_vin(raw: str) -> str:
    """Return the VIN normalized (:func:`normalize_vin`), or raise :class:`InvalidVin` saying what is wrong."""
    vin = normalize_vin(raw)
    if len(vin) != 17:
        raise InvalidVin(f"VIN must have 17 characters, got {len(vin)}")
    if not _VIN_RE.match(vin):
        bad = sorted({c for c in vin if not re.match(r"[A-HJ-NPR-Z0-9]", c)})
        raise InvalidVin(f"VIN may not contain {', '.join(repr(c) for c in bad)} (I, O and Q are never used)")
    if check_digit_applies(vin) and vin[8] != check_digit(vin):
        raise InvalidVin(f"VIN check digit (position 9) is {vin[8]!r}, expected {check_digit(vin)!r}")
    return vin


def vin_order(vin: str) -> str:
    """The key VINs sort by wherever a VIN range is judged: positions 1-8 then 10-17.

    Position 9 is left out: where it is a check digit it differs from car to car, and in text
    order it would sort before the serial (1HGCM8268NA000204 after ...8263NA000212). The SQL
    form of this key is ``ota_server.services.group_filter.vin_order_sql``: keep them alike.
    """
    return vin[:8] + vin[9:]


def vin_from_order(key: str) -> str:
    """A 17-character VIN back from ``vin_order(vin) + vin[8]`` (the order key, position 9 at the end)."""
    return key[:8] + key[-1] + key[8:-1]


def make_vin(wmi: str, vds: str, model_year_code: str, plant: str, serial: int) -> str:
    """Build a valid VIN (check digit filled in) from its parts; used by the simulator."""
    body = f"{wmi}{vds}0{model_year_code}{plant}{serial:06d}"
    if len(body) != 17 or not _VIN_RE.match(body.upper()):
        raise InvalidVin(f"VIN parts {body!r} do not make 17 valid VIN characters")
    vin = body[:8] + check_digit(body) + body[9:]
    return validate_vin(vin)
