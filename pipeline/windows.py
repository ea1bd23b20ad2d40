"""Event-time windows: counts and distinct values over the last minutes or hours.

Every structure here is advanced by the timestamps it is given, never by the wall clock, and
holds plain lists and numbers so identity state can be snapshotted without pickle.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class WindowCounter:
    """Count of events in the last ``n`` buckets of ``width`` seconds (a ring of buckets)."""

    __slots__ = ("width", "n", "counts", "ids", "total", "newest")

    def __init__(self, width: int, n: int) -> None:
        self.width = width
        self.n = n
        self.counts = [0] * n
        self.ids = [-1] * n
        self.total = 0
        self.newest = -1

    def _advance(self, bucket: int) -> None:
        if bucket <= self.newest:
            return
        if bucket - self.newest >= self.n:
            self.counts = [0] * self.n
            self.ids = [-1] * self.n
            self.ids[bucket % self.n] = bucket
            self.total = 0
        else:
            counts, ids, n = self.counts, self.ids, self.n
            for b in range(self.newest + 1, bucket + 1):
                i = b % n
                self.total -= counts[i]
                counts[i] = 0
                ids[i] = b
        self.newest = bucket

    def add(self, ts: float) -> None:
        bucket = int(ts // self.width)
        self._advance(bucket)
        i = bucket % self.n
        if self.ids[i] == bucket:  # late events older than the window are dropped
            self.counts[i] += 1
            self.total += 1

    def add_count(self, ts: float) -> int:
        """``add(ts)`` then ``count(ts)`` in one call (the hot path)."""
        bucket = int(ts // self.width)
        if bucket > self.newest:
            self._advance(bucket)
        i = bucket % self.n
        if self.ids[i] == bucket:
            self.counts[i] += 1
            self.total += 1
        return self.total

    def count(self, ts: float) -> int:
        if not self.total:  # nothing to expire (most counters of most identities)
            return 0
        self._advance(int(ts // self.width))
        return self.total

    def to_state(self) -> list:
        return [self.counts, self.ids, self.total, self.newest]

    def load_state(self, state: list) -> None:
        self.counts, self.ids, self.total, self.newest = state


class Recent:
    """Timestamps (and ids) of the last events of one kind within a horizon, for bursts."""

    __slots__ = ("horizon", "items")

    def __init__(self, horizon: float, maxlen: int = 256) -> None:
        self.horizon = horizon
        self.items: deque[tuple[float, str]] = deque(maxlen=maxlen)

    def add(self, ts: float, event_id: str) -> None:
        self.items.append((ts, event_id))

    def add_count(self, ts: float, event_id: str) -> int:
        items = self.items
        items.append((ts, event_id))
        floor = ts - self.horizon
        while items[0][0] <= floor:
            items.popleft()
        return len(items)

    def count(self, ts: float) -> int:
        items = self.items
        if not items:
            return 0
        floor = ts - self.horizon
        while items and items[0][0] <= floor:
            items.popleft()
        return len(items)


class Distinct:
    """Distinct keys seen within a horizon (last-seen order, oldest first)."""

    __slots__ = ("horizon", "last")

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self.last: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str, ts: float) -> int:
        last = self.last
        if key in last:
            if ts >= last[key]:
                last[key] = ts
                last.move_to_end(key)
        else:
            last[key] = ts
        floor = ts - self.horizon
        while True:  # the key just added is never older than the floor
            oldest = next(iter(last.values()))
            if oldest > floor:
                return len(last)
            last.popitem(last=False)

    def count(self, ts: float) -> int:
        """Distinct keys within the horizon ending at ``ts`` (expired keys are dropped)."""
        last, floor = self.last, ts - self.horizon
        while last:
            oldest = next(iter(last.values()))
            if oldest > floor:
                break
            last.popitem(last=False)
        return len(last)
