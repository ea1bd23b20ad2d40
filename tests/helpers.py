"""Building events for tests without going through a parser."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pipeline.events import SUCCESS, AccessEvent

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday, 09:00 UTC
_counter = 0


def make_event(at: datetime | None = None, **fields) -> AccessEvent:
    global _counter
    _counter += 1
    at = at or T0
    path = fields.pop("path", "secret/data/team/app")
    defaults = dict(
        source="vault", event_id=f"ev-{_counter}", ts=at.timestamp(),
        identity="entity:svc-1", display_name="svc-1", policies=("default",), operation="read",
        path=path, secret=path.replace("/data/", "/", 1), namespace="", mount_type="kv",
        remote_address="10.20.1.5", user_agent="vault-agent/1.19.2", outcome=SUCCESS, error="",
        is_login=False, auth_method="kubernetes", token_type="service",
        phases="request+response", origin="test:0",
    )
    defaults.update(fields)
    return AccessEvent(**defaults)


def every(start: datetime, step: timedelta, n: int):
    return [start + i * step for i in range(n)]


def created(versions):
    """The Create versions among finding versions (what a test of new findings counts)."""
    return [v for v in versions if v.activity_id == 1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` seconds
    pass (AssertionError naming ``what``): tests wait on a condition, never on a fixed sleep."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
