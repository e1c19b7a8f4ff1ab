"""Wave numbers as people and clients see them: from 1.

The database keeps each wave's 0-based index (``campaigns.current_wave``, ``campaign_vehicles.wave``:
the wave's position in the plan's list). Every API field, page, report, CLI line, status text and
log line says the wave's number instead, converted here and nowhere else.
"""

from __future__ import annotations

FIRST_WAVE = 1


def wave_number(index: int) -> int:
    """The number shown for the wave stored at ``index`` (0 is wave 1)."""
    return index + FIRST_WAVE


def wave_index(number: int) -> int:
    """The stored index of wave ``number`` (a filter given by a person or client, from 1)."""
    return number - FIRST_WAVE
