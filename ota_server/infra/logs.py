"""Structured logs: one JSON object per line (opt in with OTA_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# Context passed with ``extra=`` that becomes a top-level field when present.
CONTEXT_FIELDS = ("campaign_id", "vin")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}`` plus campaign_id / vin / exc_info when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, fmt: str = "text") -> None:
    """Set up the root logger: ``fmt`` is ``text`` (human) or ``json`` (one object a line)."""
    handler = logging.StreamHandler()
    if fmt.strip().lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
