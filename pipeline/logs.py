"""Log output: ``text`` for people, ``json`` (one object per line) for log shippers.

A JSON line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, when an
exception is logged, ``exception`` (its traceback as text). Any URL with a password in a
message or traceback has the password replaced by ``***``, whichever code logged it.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson

from secretscope.redact import RedactFilter, redact

FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def mask_passwords(text: str) -> str:
    return redact(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_passwords(record.getMessage()),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already redacted when the handler's RedactFilter saw it
            doc["exception"] = mask_passwords(record.exc_text)
        return orjson.dumps(doc).decode()


class _MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_passwords(super().format(record))


def configure(log_format: str = "text", level: int = logging.WARNING) -> None:
    """Send log records to stderr in ``log_format``, replacing any handler set before."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else _MaskingFormatter(TEXT_FORMAT))
    handler.addFilter(RedactFilter())  # credentials in query strings and tracebacks too
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
