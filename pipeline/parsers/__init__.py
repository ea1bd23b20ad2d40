"""Audit formats: detection and the registry of parsers.

Each supported format provides ``parse_entry(raw, origin, limits)`` returning an entry with a
``ts`` attribute (event time, POSIX seconds) and a joiner class whose ``feed(entry)`` and
``flush()`` return :class:`~secretscope.events.AccessEvent` lists. Formats with one record per call
use a pass-through joiner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import orjson

from secretscope.errors import ParseError
from secretscope.parsers import vault


@dataclass(frozen=True)
class AuditFormat:
    name: str
    parse_entry: Callable[..., Any]
    joiner: Callable[[], Any]


FORMATS: dict[str, AuditFormat] = {
    "vault": AuditFormat("vault", vault.parse_entry, vault.VaultJoiner),
}

# Formats we recognize so the error can say what a file is, before their parsers exist.
_RECOGNIZED = (
    ("cloudtrail", lambda r: "eventSource" in r or "Records" in r),
    ("gcp-audit", lambda r: "protoPayload" in r),
    ("kubernetes-audit", lambda r: str(r.get("apiVersion", "")).startswith("audit.k8s.io")
     or "auditID" in r),
    ("azure-keyvault", lambda r: "operationName" in r and "category" in r),
)


def detect_format(raw: bytes, origin: str) -> str:
    """Name the audit format of one sample record; raise ParseError naming the origin if unknown
    or not supported yet."""
    start = raw.find(b"{")
    try:
        record = orjson.loads(raw[start:]) if start >= 0 else None
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        raise ParseError("not_json", "not a JSON object, so its audit format is unknown", origin)
    if vault.looks_like(record):
        return "vault"
    for name, test in _RECOGNIZED:
        if test(record):
            raise ParseError("unsupported_format",
                             f"{name} audit records are recognized but not supported yet", origin)
    keys = ", ".join(sorted(record)[:8])
    raise ParseError("unknown_format", f"not a known audit format (keys: {keys})", origin)
