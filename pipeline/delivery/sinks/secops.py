"""Google SecOps (Chronicle) webhook feed: newline-delimited JSON (one selected OCSF document per
line) with ``X-goog-api-key`` and, if configured, ``X-Webhook-Access-Key``. A batch is split so
each request stays within ``max_bytes``; a document too big on its own is permanent."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from secretscope.delivery.config import SecOpsSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.sinks._common import HttpSink, chunks_by_size, dumps, selected


class SecOps(HttpSink):
    def __init__(self, settings: SecOpsSink, base_dir: str | Path) -> None:
        key = settings.api_key.read(base_dir, f"sinks.{settings.name}.api_key")
        feed = (settings.feed_secret.read(base_dir, f"sinks.{settings.name}.feed_secret")
                if settings.feed_secret else None)
        super().__init__(settings, (key, feed) if feed else (key,))
        self._headers = {"Content-Type": "application/json", "X-goog-api-key": key}
        if feed:
            self._headers["X-Webhook-Access-Key"] = feed

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        ids = [d.finding_id for d in items]
        lines = [dumps(selected(self.settings, d)) for d in items]
        chunks, too_big = chunks_by_size(lines, self.settings.max_bytes, overhead=0, separator=1)
        out: list[Outcome | None] = [None] * len(items)
        for i in too_big:
            out[i] = Outcome(ids[i], False, retryable=False,
                             reason=f"document of {len(lines[i])} bytes exceeds max_bytes "
                                    f"{self.settings.max_bytes}")
        for chunk in chunks:
            chunk_ids = [ids[i] for i in chunk]
            body = b"\n".join(lines[i] for i in chunk)
            resp, results = self._post(self.settings.url, chunk_ids, data=body,
                                       headers=self._headers)
            if resp is not None:
                results = ([Outcome.delivered(fid) for fid in chunk_ids]
                           if 200 <= resp.status_code < 300
                           else self._from_response(chunk_ids, resp))
            for i, outcome in zip(chunk, results):
                out[i] = outcome
        return out  # type: ignore[return-value]
