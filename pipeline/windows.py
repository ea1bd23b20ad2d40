"""Event-time windows: counts and distinct values over the last minutes or hours.

These are the reference of the compiled windows the pipeline runs (``secretscope._native``,
``pipeline/native``): ``tests/test_native_windows.py`` checks that both give the same counts,
entries and snapshot state for any sequence of calls.

Every structure here is advanced by the timestamps it is given, never by the wall clock, and
holds plain numbers (in ``array`` buffers) so identity state can be snapshotted without pickle.
They are kept small because there is one set per tracked identity, and most identities make a
few calls a day: storage grows with what is inside a window, not with the window's length.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections import OrderedDict


def _fits(bucket: int) -> bool:
    """Buckets of minutes or quarter hours since 1970 fit 32 bits."""
    return -2**31 < bucket < 2**31


class WindowCounter(array):
    """Count of events in the last ``n`` buckets of ``width`` seconds.

    It behaves as a ring of ``n`` buckets advanced by event time, but stores only the buckets
    that hold events, as (bucket, count) pairs oldest first. A late event is counted when its
    bucket is still in the window and not older than the last time the window was emptied by a
    gap (``valid_from``): a ring overwrites exactly those buckets. One 32-bit array holds it
    all, ``[newest, valid_from, bucket, count, bucket, count, ...]``: the object itself (one
    object instead of a wrapper around an array saves 64 bytes; every identity has a few), or
    ``wide``, a 64-bit one, from the first bucket that does not fit 32 bits. Compare windows
    with ``is``: ``==`` compares their contents."""

    __slots__ = ("width", "n", "total", "wide")

    def __new__(cls, width: int, n: int) -> "WindowCounter":
        return super().__new__(cls, "i")

    def __init__(self, width: int, n: int) -> None:
        self.width = width
        self.n = n
        self.total = 0
        self.wide: array | None = None

    @property
    def data(self) -> array | None:
        """The window's array (itself or ``wide``); None until the first event."""
        wide = self.wide
        if wide is not None:
            return wide
        return self if len(self) else None

    @property
    def newest(self) -> int:
        data = self.data
        return data[0] if data is not None else -1

    def _start(self, bucket: int) -> None:
        # as a ring that starts before bucket -1: a first bucket within n of it empties nothing
        valid_from = bucket if bucket + 1 >= self.n else -1
        if _fits(bucket):
            self.extend((bucket, valid_from))
        else:
            self.wide = array("q", (bucket, valid_from))

    def _advance(self, bucket: int) -> None:
        data = self.data
        if data is None:
            self._start(bucket)
            return
        if bucket >= 2**31 and data is self:
            data = self.wide = array("q", self)
            del self[:]
        if bucket - data[0] >= self.n:
            del data[2:]
            self.total = 0
            data[1] = bucket  # valid_from
        elif self.total:
            floor = bucket - self.n
            if data[2] <= floor:
                k, size = 2, len(data)
                while k < size and data[k] <= floor:
                    self.total -= data[k + 1]
                    k += 2
                del data[2:k]
        data[0] = bucket

    def _put(self, bucket: int) -> None:
        data = self.data
        if bucket <= data[0] - self.n or bucket < data[1]:
            return  # late events older than the window are dropped
        self.total += 1
        k = len(data)
        if k > 2 and data[-2] == bucket:
            data[-1] += 1
            return
        while k > 2 and data[k - 2] > bucket:
            k -= 2
        if k > 2 and data[k - 2] == bucket:
            data[k - 1] += 1
        elif k == len(data):
            data.append(bucket)
            data.append(1)
        else:
            data[k:k] = array(data.typecode, (bucket, 1))

    def add(self, ts: float) -> None:
        bucket = int(ts // self.width)
        data = self.data
        if data is None or bucket > data[0]:
            self._advance(bucket)
        self._put(bucket)

    def add_count(self, ts: float) -> int:
        """``add(ts)`` then ``count(ts)`` in one call (the hot path: inlines the usual cases,
        a call in the newest bucket or in a new one within the window)."""
        bucket = int(ts // self.width)
        if len(self) and bucket < 2147483648:  # 32-bit: self is the data
            newest = self[0]
            if bucket == newest:
                if self[-2] == bucket and len(self) > 2:
                    self[-1] += 1
                    self.total += 1
                    return self.total
            elif newest < bucket < newest + self.n:
                total = self.total
                if total:
                    floor = bucket - self.n
                    if self[2] <= floor:
                        k, size = 2, len(self)
                        while k < size and self[k] <= floor:
                            total -= self[k + 1]
                            k += 2
                        del self[2:k]
                self[0] = bucket
                self.append(bucket)
                self.append(1)
                self.total = total + 1
                return self.total
        data = self.data
        if data is None or bucket > data[0]:
            self._advance(bucket)
        self._put(bucket)
        return self.total

    def count(self, ts: float) -> int:
        if not self.total:  # nothing to expire (most counters of most identities)
            return 0
        bucket = int(ts // self.width)
        if bucket > self.data[0]:
            self._advance(bucket)
        return self.total

    def to_state(self) -> list:
        data = self.data
        if data is None:
            return [[], 0, -1, -1]
        return [list(data[2:]), self.total, data[0], data[1]]

    def load_state(self, state: list) -> None:
        pairs, self.total, newest, valid_from = state
        del self[:]
        self.wide = None
        if newest < 0 and not pairs:
            return
        values = [newest, valid_from, *pairs]
        if all(_fits(b) for b in values):
            self.extend(values)
        else:
            self.wide = array("q", values)


class Recent(array):
    """Timestamps (and, with ``ids``, event ids) of the last events of one kind within a
    horizon, for bursts. Entries leave by time or, beyond ``maxlen``, oldest first.

    The timestamps are the object itself, an ``array("d")``: every identity has a window of
    the last minute's requests, and one object instead of a wrapper around an array saves 64
    bytes each. Compare windows with ``is``: ``==`` compares their timestamps."""

    __slots__ = ("horizon", "maxlen", "ids")

    def __new__(cls, horizon: float, maxlen: int = 256, ids: bool = False) -> "Recent":
        return super().__new__(cls, "d")

    def __init__(self, horizon: float, maxlen: int = 256, ids: bool = False) -> None:
        self.horizon = horizon
        self.maxlen = maxlen
        self.ids: list[str] | None = [] if ids else None

    @property
    def items(self) -> list[tuple[float, str]]:
        """(time, event id) oldest first; ids are "" where they are not kept."""
        ids = self.ids if self.ids is not None else [""] * len(self)
        return list(zip(self, ids))

    def _drop(self, k: int) -> None:
        del self[:k]
        if self.ids is not None:
            del self.ids[:k]

    def add(self, ts: float, event_id: str = "") -> None:
        self.append(ts)
        if self.ids is not None:
            self.ids.append(event_id)
        if len(self) > self.maxlen:
            self._drop(1)

    def add_count(self, ts: float, event_id: str = "") -> int:
        self.append(ts)
        if self.ids is not None:
            self.ids.append(event_id)
        floor = ts - self.horizon
        if self[0] <= floor or len(self) > self.maxlen:
            k, size, maxlen = 0, len(self), self.maxlen
            while k < size and (self[k] <= floor or size - k > maxlen):
                k += 1
            self._drop(k)
        return len(self)

    def count(self, ts: float) -> int:
        if not self:
            return 0
        floor = ts - self.horizon
        if self[0] <= floor:
            k, size = 1, len(self)
            while k < size and self[k] <= floor:
                k += 1
            self._drop(k)
        return len(self)

    def to_state(self) -> list:
        return [list(self), self.ids]

    def load_state(self, state: list) -> None:
        times, ids = state
        del self[:]
        self.extend(times)
        self.ids = list(ids) if ids is not None else None


_SMALL = 16  # keys a Distinct keeps in a plain dict before it needs an OrderedDict


class Distinct(dict):
    """Distinct keys seen within a horizon (last-seen order, oldest first).

    The object is itself the dict of keys and last-seen times while there are few (every
    identity has two of these windows: one object instead of a wrapper around a dict saves
    32 bytes each; moving a key to the end is a delete and an insert). Beyond :data:`_SMALL`
    keys an OrderedDict (``big``) takes over, because a plain dict's oldest entry is found by
    scanning past the holes its deletions leave. Compare windows with ``is``: ``==`` compares
    their keys."""

    __slots__ = ("horizon", "big")

    def __init__(self, horizon: float) -> None:
        super().__init__()
        self.horizon = horizon
        self.big: OrderedDict | None = None

    @property
    def last(self) -> dict[str, float]:
        """Keys and last-seen times, oldest first."""
        return self if self.big is None else self.big

    def add(self, key: str, ts: float) -> int:
        last = self.big
        if last is None:
            last = self
            seen = self.get(key)
            if seen is None:
                self[key] = ts
                if len(self) > _SMALL:
                    last = self.big = OrderedDict(self)
                    self.clear()
            elif ts >= seen:
                del self[key]
                self[key] = ts
        else:
            seen = last.get(key)
            if seen is None:
                last[key] = ts
            elif ts >= seen:
                last[key] = ts
                last.move_to_end(key)
        floor = ts - self.horizon
        while True:  # the key just added is never older than the floor
            oldest = next(iter(last))
            if last[oldest] > floor:
                return len(last)
            del last[oldest]

    def load(self, items) -> None:
        """Keys and last-seen times, oldest first (a snapshot's)."""
        self.clear()
        if len(items) <= _SMALL:
            self.update(items)
            self.big = None
        else:
            self.big = OrderedDict(items)

    def count(self, ts: float) -> int:
        """Distinct keys within the horizon ending at ``ts`` (expired keys are dropped)."""
        last, floor = self.last, ts - self.horizon
        while last:
            oldest = next(iter(last))
            if last[oldest] > floor:
                break
            del last[oldest]
        return len(last)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _pack(event_id: str) -> bytes | None:
    """16 bytes for an id in the lowercase UUID form Vault and OpenBao log, else None."""
    if _UUID(event_id) is None:
        return None
    return bytes.fromhex(event_id.replace("-", ""))


def _unpack(packed: bytes) -> str:
    h = packed.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class RecentEvents:
    """The last ``maxlen`` (time, event id) of an identity, oldest first, like a bounded deque
    of pairs but compact: while every id is a UUID in the lowercase form Vault logs, one
    bytearray of 24-byte entries (the time, then the id's 16 bytes); from the first id that is
    not, times in an array and ids as strings. Up to :data:`_SLACK` older entries stay until
    they are cut together, so an append does not shift the buffer."""

    __slots__ = ("maxlen", "data", "ids")

    def __init__(self, maxlen: int = 64) -> None:
        self.maxlen = maxlen
        self.data: bytearray | array = bytearray()
        self.ids: list[str] | None = None  # None while the entries are packed in data

    def append(self, ts: float, event_id: str) -> None:
        ids = self.ids
        if ids is None:
            packed = _pack(event_id)
            if packed is not None:
                data = self.data
                data += _ENTRY.pack(ts, packed)
                if len(data) > _ENTRY.size * (self.maxlen + _SLACK):
                    del data[:len(data) - _ENTRY.size * self.maxlen]
                return
            pairs = list(_ENTRY.iter_unpack(self.data))
            self.data = array("d", [t for t, _ in pairs])
            ids = self.ids = [_unpack(b) for _, b in pairs]
        self.data.append(ts)
        ids.append(event_id)
        if len(ids) > self.maxlen + _SLACK:
            cut = len(ids) - self.maxlen
            del self.data[:cut]
            del ids[:cut]

    def __len__(self) -> int:
        n = len(self.data) // _ENTRY.size if self.ids is None else len(self.ids)
        return min(n, self.maxlen)

    def __iter__(self):
        ids, data = self.ids, self.data
        if ids is None:
            # a copy: a generator left unfinished must not pin the buffer's size
            kept = bytes(data[max(0, len(data) - _ENTRY.size * self.maxlen):])
            return ((ts, _unpack(b)) for ts, b in _ENTRY.iter_unpack(kept))
        first = max(0, len(ids) - self.maxlen)
        return ((data[i], ids[i]) for i in range(first, len(ids)))


_ENTRY = struct.Struct("<d16s")
_SLACK = 16
