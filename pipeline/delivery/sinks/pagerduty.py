"""PagerDuty Events API v2: every version of a finding under ``dedup_key`` = finding id, so they
all land on one alert: Create and Update versions are ``trigger`` events (a re-send updates the
alert instead of opening another), an analyst's acknowledgement an ``acknowledge``, the Close
version a ``resolve``. 202 accepted; 429 and 5xx retried;
400 (invalid event or routing key) permanent."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secretscope.delivery.config import PagerDutySink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.sinks._common import HttpSink, dumps, iso_time, selected

SEVERITIES = {5: "critical", 4: "error", 3: "warning"}  # anything lower is "info"
MAX_SUMMARY = 1024


def event(routing_key: str, d: Delivery, doc: dict[str, Any]) -> dict[str, Any]:
    info = doc.get("finding_info", {})
    actor = doc.get("actor", {}).get("user", {})
    summary = doc.get("message") or info.get("title") or f"secretscope finding {d.finding_id}"
    payload: dict[str, Any] = {
        "summary": summary[:MAX_SUMMARY],
        "severity": SEVERITIES.get(d.severity_id, "info"),
        "source": actor.get("uid") or "secretscope",
        "timestamp": iso_time(d.ocsf.get("time")),
        "component": "secretscope",
        "custom_details": doc,
    }
    if info.get("analytic", {}).get("name"):
        payload["class"] = info["analytic"]["name"]
    if d.activity_id == 3:  # Close
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": d.finding_id}
    if d.ocsf.get("status_id") == 2:  # an analyst acknowledged it
        return {"routing_key": routing_key, "event_action": "acknowledge",
                "dedup_key": d.finding_id}
    return {"routing_key": routing_key, "event_action": "trigger", "dedup_key": d.finding_id,
            "payload": payload}


class PagerDuty(HttpSink):
    def __init__(self, settings: PagerDutySink, base_dir: str | Path) -> None:
        key = settings.routing_key.read(base_dir, f"sinks.{settings.name}.routing_key")
        super().__init__(settings, (key,))
        self._key = key

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        return [self._send_one(d) for d in items]

    def _send_one(self, d: Delivery) -> Outcome:
        body = dumps(event(self._key, d, selected(self.settings, d)))
        resp, failures = self._post(self.settings.url, [d.finding_id], data=body,
                                    headers={"Content-Type": "application/json"})
        if resp is None:
            return failures[0]
        if 200 <= resp.status_code < 300:
            return Outcome.delivered(d.finding_id)
        return self._from_response([d.finding_id], resp)[0]
