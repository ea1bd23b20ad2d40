"""What every sink shares: field selection, the HTTP session, and mapping failures to outcomes.

Sinks never retry and never raise for product or network errors: each failure becomes an
:class:`Outcome` (retryable or not, per :mod:`secretscope.delivery.retry`), and the worker applies
the one retry policy. Reasons never carry credentials: response excerpts are redacted and network
errors are named by kind and host only (a Slack webhook URL's path is itself the secret).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests

from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.renderings import select_fields
from secretscope.delivery.retry import retry_after_seconds, retryable_status

BODY_EXCERPT = 200  # characters of a product's error body kept in a reason


def selected(settings: Any, delivery: Delivery) -> dict[str, Any]:
    """The OCSF document cut down to the sink's ``fields`` (all of it when none are set)."""
    return select_fields(delivery.ocsf, settings.fields) if settings.fields else delivery.ocsf


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def iso_time(epoch_ms: int | float | None) -> str:
    """An OCSF ``time`` (epoch milliseconds) as RFC 3339 UTC with milliseconds."""
    dt = datetime.fromtimestamp((epoch_ms or 0) / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_session(ca_file: str | None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy/netrc lookups: ~150 us per request, and no surprises
    session.verify = ca_file or True
    return session


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "?"


_CERT = re.compile(r"certificate verify failed[^'\")(]*")


def network_reason(exc: BaseException, url: str) -> str:
    """A short, credential-free description of a transport failure."""
    where = host_of(url)
    if isinstance(exc, requests.exceptions.SSLError):
        found = _CERT.search(str(exc))
        return f"TLS error ({where}): {found.group(0).strip() if found else 'handshake failed'}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"timeout ({where})"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "RemoteDisconnected" in text or "reset" in text.lower() or "aborted" in text.lower():
            return f"connection closed by peer ({where})"
        return f"connection failed ({where})"
    return f"{type(exc).__name__} ({where})"


def http_reason(resp: requests.Response, secrets: Iterable[str] = ()) -> str:
    body = " ".join(resp.text[:BODY_EXCERPT * 2].split())[:BODY_EXCERPT]
    return redact(f"HTTP {resp.status_code}: {body}".rstrip(": "), secrets)


def failed(ids: Iterable[str], reason: str, *, retryable: bool,
           retry_after: float | None = None) -> list[Outcome]:
    return [Outcome(fid, False, retryable=retryable, reason=reason, retry_after=retry_after)
            for fid in ids]


def from_response(ids: Sequence[str], resp: requests.Response,
                  secrets: Iterable[str] = ()) -> list[Outcome]:
    """Outcomes of a non-success response applying to every id it carried."""
    retryable = retryable_status(resp.status_code)
    after = retry_after_seconds(resp.headers.get("Retry-After")) if retryable else None
    return failed(ids, http_reason(resp, secrets), retryable=retryable, retry_after=after)


class HttpSink:
    """Base of the HTTP sinks: one session (keep-alive, ``ca_file``), timeouts, redaction."""

    def __init__(self, settings: Any, secrets: Sequence[str] = ()) -> None:
        self.settings = settings
        self.name = settings.name
        self.batch_size = settings.batch_size
        self._secrets = tuple(secrets)
        self._session = new_session(settings.ca_file)

    def _post(self, url: str, ids: Sequence[str], **kwargs: Any
              ) -> tuple[requests.Response | None, list[Outcome]]:
        """The response, or None and retryable outcomes for ``ids`` if the transport failed."""
        try:
            resp = self._session.post(url, timeout=self.settings.timeout_seconds, **kwargs)
        except requests.RequestException as exc:
            return None, failed(ids, network_reason(exc, url), retryable=True)
        return resp, []

    def _from_response(self, ids: Sequence[str], resp: requests.Response) -> list[Outcome]:
        return from_response(ids, resp, self._secrets)

    def close(self) -> None:
        self._session.close()


def chunks_by_size(encoded: Sequence[bytes], max_bytes: int, overhead: int, separator: int
                   ) -> tuple[list[list[int]], list[int]]:
    """Group item indexes into requests of at most ``max_bytes`` (``overhead`` bytes per request,
    ``separator`` bytes between items). Returns the chunks and the indexes too big on their own."""
    chunks: list[list[int]] = []
    too_big: list[int] = []
    current: list[int] = []
    size = overhead
    for i, data in enumerate(encoded):
        if overhead + len(data) > max_bytes:
            too_big.append(i)
            continue
        extra = len(data) + (separator if current else 0)
        if current and size + extra > max_bytes:
            chunks.append(current)
            current, size = [], overhead
            extra = len(data)
        current.append(i)
        size += extra
    if current:
        chunks.append(current)
    return chunks, too_big
