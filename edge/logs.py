"""Structured logs: one JSON object per line on stderr.

Every record of the `xscreen` logger tree is written as JSON with ts, level, logger, msg, and any fields
passed in `extra={"fields": {...}}` merged at the top level — so a log shipper can index `route`,
`status`, `latency_ms`, `station` without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

#: The access log: one line per HTTP request or WebSocket message.
ACCESS_LOGGER = "xscreen.edge.access"
_HANDLER_NAME = "xscreen-json"
#: The id of the request being served (set by `edge.metrics.RequestMetricsMiddleware`): every record logged
#: while serving it, in its task, its threads (`asyncio.to_thread` copies the context) and its writes' done
#: callbacks, carries it, whoever logs.
request_id_var: ContextVar[str | None] = ContextVar("xscreen_request_id", default=None)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; `record.fields` (a dict) is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if doc.get("request_id") is None and (request_id := request_id_var.get()) is not None:
            doc["request_id"] = request_id
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    """Send the `xscreen` logger tree to stderr as JSON lines (idempotent: one handler however often called).

    Records still propagate to the root logger, so test harnesses (pytest's caplog) see them too.
    """
    logger = logging.getLogger("xscreen")
    logger.setLevel(level)
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `msg` with structured `fields` (shown as top-level JSON keys)."""
    logger.log(level, msg, extra={"fields": fields})


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the served process: the service's and uvicorn's messages as JSON
    lines, and any other library's warnings too (the root logger's), each once; uvicorn's access log off
    (the service logs each request itself, with more fields)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "edge.logs.JsonFormatter"}},
        "handlers": {_HANDLER_NAME: {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "xscreen": {"handlers": [_HANDLER_NAME], "level": level, "propagate": False},
            "uvicorn": {"handlers": [_HANDLER_NAME], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": [_HANDLER_NAME], "level": "WARNING"},
    }
