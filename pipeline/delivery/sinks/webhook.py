"""Generic webhook signed per Standard Webhooks: one request per finding version, ``webhook-id``
= ``<finding id>.<version>`` (the receiver's idempotency key: each version is a distinct message;
the payload's ``finding_info.uid`` ties them together), ``webhook-signature`` = ``v1,`` + base64
HMAC-SHA256 of ``id.timestamp.body`` keyed by the base64 part of the ``whsec_`` secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from pathlib import Path

from secretscope.delivery.config import WebhookSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.renderings import to_ecs
from secretscope.delivery.sinks._common import HttpSink, dumps, iso_time, selected
from secretscope.errors import ConfigError

EVENT_TYPE = "secretscope.finding"


def signing_key(secret: str, where: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ConfigError(f"{where}: not a whsec_<base64> secret") from None


def signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Webhook(HttpSink):
    def __init__(self, settings: WebhookSink, base_dir: str | Path) -> None:
        where = f"sinks.{settings.name}.secret"
        secret = settings.secret.read(base_dir, where)
        super().__init__(settings, (secret,))
        self._key = signing_key(secret, where)

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        return [self._send_one(d) for d in items]

    def _send_one(self, d: Delivery) -> Outcome:
        doc = selected(self.settings, d)
        data = to_ecs(doc) if self.settings.format == "ecs" else doc
        body = dumps({"type": EVENT_TYPE, "timestamp": iso_time(time.time() * 1000),
                      "data": data})
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "webhook-id": d.key,
                   "webhook-timestamp": ts,
                   "webhook-signature": signature(self._key, d.key, ts, body)}
        resp, failures = self._post(self.settings.url, [d.finding_id], data=body,
                                    headers=headers)
        if resp is None:
            return failures[0]
        if 200 <= resp.status_code < 300:
            return Outcome.delivered(d.finding_id)
        return self._from_response([d.finding_id], resp)[0]
