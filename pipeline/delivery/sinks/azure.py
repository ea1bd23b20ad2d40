"""Azure Monitor Logs Ingestion API (Microsoft Sentinel custom tables).

A client-credentials token from ``{authority}/{tenant}/oauth2/v2.0/token`` (cached until shortly
before it expires) authorises POSTs of JSON arrays to
``{endpoint}/dataCollectionRules/{rule_id}/streams/{stream}?api-version=2023-01-01``. Each POST
stays within ``max_bytes`` (the API takes at most 1 MB); a record too big on its own is
permanent. Records are the selected OCSF document plus ``TimeGenerated``. A 401 drops the cached
token so the retry fetches a new one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from secretscope.delivery.config import AzureLogsSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.sinks._common import (HttpSink, chunks_by_size, dumps, failed,
                                             from_response, http_reason, iso_time, selected)

API_VERSION = "2023-01-01"
TOKEN_MARGIN_SECONDS = 300.0  # refresh this long before expiry (at most half the lifetime)


class AzureLogs(HttpSink):
    def __init__(self, settings: AzureLogsSink, base_dir: str | Path) -> None:
        secret = settings.client_secret.read(base_dir, f"sinks.{settings.name}.client_secret")
        super().__init__(settings, (secret,))
        self._client_secret = secret
        self._token_url = (f"{settings.authority.rstrip('/')}/{settings.tenant_id}"
                           "/oauth2/v2.0/token")
        self._url = (f"{settings.endpoint.rstrip('/')}/dataCollectionRules/{settings.rule_id}"
                     f"/streams/{settings.stream}?api-version={API_VERSION}")
        self._token: str | None = None
        self._token_expires = 0.0  # time.monotonic() after which the token is refreshed

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        if not items:
            return []
        ids = [d.finding_id for d in items]
        token, failures = self._bearer(ids)
        if token is None:
            return failures
        records = [dumps({**selected(self.settings, d),
                          "TimeGenerated": iso_time(d.ocsf.get("time"))}) for d in items]
        chunks, too_big = chunks_by_size(records, self.settings.max_bytes, overhead=2, separator=1)
        out: list[Outcome | None] = [None] * len(items)
        for i in too_big:
            out[i] = Outcome(ids[i], False, retryable=False,
                             reason=f"record of {len(records[i])} bytes exceeds max_bytes "
                                    f"{self.settings.max_bytes}")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for chunk in chunks:
            body = b"[" + b",".join(records[i] for i in chunk) + b"]"
            chunk_ids = [ids[i] for i in chunk]
            resp, results = self._post(self._url, chunk_ids, data=body, headers=headers)
            if resp is not None:
                if 200 <= resp.status_code < 300:
                    results = [Outcome.delivered(fid) for fid in chunk_ids]
                elif resp.status_code == 401:  # token revoked or expired early: fetch anew
                    results = failed(chunk_ids, http_reason(resp, self._all_secrets()),
                                     retryable=True)
                    self._token = None
                else:
                    results = from_response(chunk_ids, resp, self._all_secrets())
            for i, outcome in zip(chunk, results):
                out[i] = outcome
        return out  # type: ignore[return-value]

    def _all_secrets(self) -> tuple[str, ...]:
        return self._secrets + ((self._token,) if self._token else ())

    def _bearer(self, ids: list[str]) -> tuple[str | None, list[Outcome]]:
        if self._token and time.monotonic() < self._token_expires:
            return self._token, []
        form = {"grant_type": "client_credentials", "client_id": self.settings.client_id,
                "client_secret": self._client_secret, "scope": self.settings.scope}
        resp, failures = self._post(self._token_url, ids, data=form)
        if resp is None:
            return None, [_prefixed(o, "token: ") for o in failures]
        if resp.status_code != 200:
            return None, [_prefixed(o, "token: ") for o in self._from_response(ids, resp)]
        try:
            body = orjson.loads(resp.content)
            token, lifetime = body["access_token"], float(body.get("expires_in", 3600))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None, failed(ids, "token: malformed token response", retryable=True)
        self._token = token
        self._token_expires = time.monotonic() + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 2)
        return token, []


def _prefixed(o: Outcome, prefix: str) -> Outcome:
    return Outcome(o.finding_id, o.ok, o.retryable, prefix + o.reason, o.retry_after)
