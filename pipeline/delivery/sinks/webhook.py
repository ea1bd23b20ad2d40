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
SECRET_PREFIX = "whsec_"
KEY_BYTES = (24, 64)  # Standard Webhooks: a random key of 24 to 64 bytes


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not a Standard Webhooks signing secret (``whsec_`` + the base64 of a
    24 to 64 byte key), or None; never quotes the secret."""
    if not secret.startswith(SECRET_PREFIX):
        return f"does not start with {SECRET_PREFIX} (Standard Webhooks secrets do)"
    body = secret[len(SECRET_PREFIX):]
    try:
        # padding is optional, as in the reference implementation
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        return f"is not base64 after {SECRET_PREFIX}"
    low, high = KEY_BYTES
    if not low <= len(key) <= high:
        return f"holds a {len(key)}-byte key; Standard Webhooks keys have {low} to {high} bytes"
    return None


def signing_key(secret: str, where: str) -> bytes:
    problem = secret_problem(secret)
    if problem:
        raise ConfigError(f"{where}: the secret {problem}")
    body = secret[len(SECRET_PREFIX):]
    return base64.b64decode(body + "=" * (-len(body) % 4))


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
