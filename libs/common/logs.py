"""Logging set-up: the tenant, campaign, run and message ids on every line."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from typing import Iterator

CONTEXT_FIELDS = ("request_id", "tenant_id", "campaign_id", "run_id", "message_id")

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("tm_log_context", default={})


@contextlib.contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Bind ids to every log line written inside the block (None values are skipped)."""
    merged = dict(_context.get())
    merged.update({key: str(value) for key, value in ids.items() if value is not None})
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copy the bound ids onto each record, as empty strings where unbound."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        for field in CONTEXT_FIELDS:
            if not hasattr(record, field):
                setattr(record, field, bound.get(field, ""))
        return True


class TextFormatter(logging.Formatter):
    """Readable lines for development: ids shown only when bound."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{field}={getattr(record, field)}" for field in CONTEXT_FIELDS if getattr(record, field, ""))
        return f"{line} [{ids}]" if ids else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line for production log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, "")
            if value:
                entry[field] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Send every logger's records to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
