"""The one retry policy for every sink.

Retryable: network errors, timeouts, HTTP 408, 429 and 5xx except 501. Everything else (4xx,
501) is permanent. Waits are exponential backoff with full jitter (a uniform draw in
[0, min(cap, base * 2**attempt)]), never shorter than a ``Retry-After`` the product sent, and a
delivery is given up (dead-lettered) once its total time since the first attempt would pass the
budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

RETRYABLE_STATUS = frozenset({408, 429})


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or (500 <= status <= 599 and status != 501)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (delta-seconds or an HTTP date) in seconds, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass
class RetryPolicy:
    base_seconds: float = 0.5
    cap_seconds: float = 60.0
    budget_seconds: float = 900.0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, attempt: int, elapsed: float,
                   retry_after: float | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (attempts count from 1), or None when
        the budget would be exhausted by then."""
        delay = self.rng.uniform(0.0, min(self.cap_seconds, self.base_seconds * 2 ** attempt))
        if retry_after is not None:
            delay = max(delay, retry_after)
        if elapsed + delay > self.budget_seconds:
            return None
        return delay
