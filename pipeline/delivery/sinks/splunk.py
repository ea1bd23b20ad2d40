"""Splunk HTTP Event Collector: a batch is one POST of concatenated JSON events to
``/services/collector/event`` with ``Authorization: Splunk <token>``.

200 means the whole batch was accepted. A 400 naming ``invalid-event-number`` rejects one event
for good; Splunk may or may not have indexed the events around it, so those are retried
(at-least-once: a duplicate in Splunk is better than a lost finding). Other statuses apply to the
whole batch: 503 (code 9, server busy) and 500 are retried, 400/401/403 are permanent.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

import orjson

from secretscope.delivery.config import SplunkHecSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.renderings import to_hec
from secretscope.delivery.sinks._common import HttpSink, dumps, failed, http_reason, selected


class SplunkHec(HttpSink):
    def __init__(self, settings: SplunkHecSink, base_dir: str | Path) -> None:
        token = settings.token.read(base_dir, f"sinks.{settings.name}.token")
        super().__init__(settings, (token,))
        self._headers = {"Authorization": f"Splunk {token}", "Content-Type": "application/json"}
        # CIM and Splunk's own views key on host: name the machine that raised the finding,
        # not the HEC token's default
        self._host = socket.gethostname()

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        if not items:
            return []
        s = self.settings
        body = b"".join(dumps(to_hec(selected(s, d), source=s.source, sourcetype=s.sourcetype,
                                     index=s.index, host=self._host)) for d in items)
        ids = [d.finding_id for d in items]
        resp, failures = self._post(s.url, ids, data=body, headers=self._headers)
        if resp is None:
            return failures
        if resp.status_code == 200:
            return [Outcome.delivered(fid) for fid in ids]
        bad = _invalid_event_number(resp) if resp.status_code == 400 else None
        if bad is None or not 0 <= bad < len(ids):
            return self._from_response(ids, resp)
        reason = http_reason(resp, self._secrets)
        out = failed(ids, f"batch rejected at event {bad}; not known to be indexed",
                     retryable=True)
        out[bad] = Outcome(ids[bad], False, retryable=False, reason=reason)
        return out


def _invalid_event_number(resp) -> int | None:
    try:
        value = orjson.loads(resp.content).get("invalid-event-number")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None
