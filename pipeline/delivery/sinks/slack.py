"""Slack incoming webhook: one short message per finding when it is created and when its severity
rises (``versions: raises``; routed here for high severity). The webhook URL is itself the
secret, so reasons name only its host."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from secretscope.delivery.config import SlackSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.sinks._common import HttpSink, dumps, selected

MAX_TEXT = 2900  # a section block's text may hold 3000 characters


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(doc: dict[str, Any]) -> dict[str, Any]:
    info = doc.get("finding_info", {})
    severity = doc.get("severity", "")
    title = info.get("title") or doc.get("message", "finding")
    raised = doc.get("activity_id") == 2
    what = "finding raised to" if raised else "finding"
    lines = [f"*{_escape(severity)}* secretscope {what}: *{_escape(title)}*"]
    if doc.get("message"):
        lines.append(_escape(doc["message"]))
    if info.get("desc"):
        lines.append(_escape(info["desc"]))
    uid = info.get("uid") or doc.get("metadata", {}).get("uid", "")
    version = (doc.get("unmapped") or {}).get("secretscope", {}).get("version", 1)
    lines.append(f"finding id `{_escape(uid)}` version {version}")
    text = "\n".join(lines)[:MAX_TEXT]
    return {"text": f"{severity} secretscope finding: {title}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


class Slack(HttpSink):
    def __init__(self, settings: SlackSink, base_dir: str | Path) -> None:
        url = settings.webhook_url.read(base_dir, f"sinks.{settings.name}.webhook_url")
        super().__init__(settings, (url,))
        self._url = url

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        return [self._send_one(d) for d in items]

    def _send_one(self, d: Delivery) -> Outcome:
        body = dumps(message(selected(self.settings, d)))
        resp, failures = self._post(self._url, [d.finding_id], data=body,
                                    headers={"Content-Type": "application/json"})
        if resp is None:
            return failures[0]
        if resp.status_code == 200:
            return Outcome.delivered(d.finding_id)
        return self._from_response([d.finding_id], resp)[0]
