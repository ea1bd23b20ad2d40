"""Elasticsearch ``_bulk``: one NDJSON request per batch, each document an ECS rendering indexed
with ``_id`` = finding id and the finding's version as an external version, so the index holds one
document per finding, its newest version: a 409 version conflict means that version or a newer
one is already there, which counts as delivered (a re-send, or an older version arriving late). A 200 response can still carry per-item
failures (``errors: true``); each item's own status decides its outcome (429/5xx retried)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from secretscope.delivery.config import ElasticSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.renderings import to_ecs
from secretscope.delivery.retry import retry_after_seconds, retryable_status
from secretscope.delivery.sinks._common import BODY_EXCERPT, HttpSink, dumps, failed, selected


class Elastic(HttpSink):
    def __init__(self, settings: ElasticSink, base_dir: str | Path) -> None:
        key = (settings.api_key.read(base_dir, f"sinks.{settings.name}.api_key")
               if settings.api_key else None)
        super().__init__(settings, (key,) if key else ())
        self._headers = {"Content-Type": "application/x-ndjson"}
        if key:
            self._headers["Authorization"] = f"ApiKey {key}"
        self._url = settings.url.rstrip("/") + "/_bulk"

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        if not items:
            return []
        lines = []
        for d in items:
            lines.append(dumps({"index": {"_index": self.settings.index, "_id": d.finding_id,
                                          "version": d.version,
                                          "version_type": "external"}}))
            lines.append(dumps(to_ecs(selected(self.settings, d))))
        ids = [d.finding_id for d in items]
        resp, failures = self._post(self._url, ids, data=b"\n".join(lines) + b"\n",
                                    headers=self._headers)
        if resp is None:
            return failures
        if resp.status_code != 200:
            return self._from_response(ids, resp)
        try:
            results = orjson.loads(resp.content)["items"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return failed(ids, "malformed _bulk response", retryable=True)
        if not isinstance(results, list) or len(results) != len(ids):
            return failed(ids, "_bulk response does not match the request", retryable=True)
        after = retry_after_seconds(resp.headers.get("Retry-After"))
        return [_item_outcome(fid, r, after) for fid, r in zip(ids, results)]


def _item_outcome(fid: str, result: dict[str, Any], after: float | None) -> Outcome:
    item = next(iter(result.values()), {}) if isinstance(result, dict) else {}
    status = item.get("status", 0)
    if 200 <= status < 300 or status == 409:  # 409: this version or a newer one is there
        return Outcome.delivered(fid)
    error = item.get("error") or {}
    detail = f"{error.get('type', '')}: {error.get('reason', '')}" if isinstance(error, dict) \
        else str(error)
    reason = f"HTTP {status}: {detail}"[:BODY_EXCERPT]
    if retryable_status(status):
        return Outcome(fid, False, retryable=True, reason=reason, retry_after=after)
    return Outcome(fid, False, retryable=False, reason=reason)
