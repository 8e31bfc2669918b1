"""Log output for the long-running processes: text or one JSON object per line.

One timestamp format everywhere: ISO 8601 in UTC with milliseconds and a Z ("2026-12-01T21:35:
12.345Z"), the format of `rolloutctl history --json`. The same dictConfig serves the parent
process and every uvicorn worker (uvicorn applies `log_config` in each).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

LEVELS = ("critical", "error", "warning", "info", "debug")
FORMATS = ("text", "json")

# uvicorn's access records carry (client, method, path, http version, status) as args.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            doc.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def dict_config(level: str, fmt: str) -> dict[str, Any]:
    """A logging.config.dictConfig for our loggers and uvicorn's, at `level`, in `fmt`."""
    formatter = {"()": f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"}
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"main": handler},
        "root": {"handlers": ["main"], "level": upper},
        "loggers": {
            name: {"handlers": [], "level": upper, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
