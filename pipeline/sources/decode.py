"""Raw records -> events: the parse and join step every source shares.

A :class:`Decoder` takes one record at a time (``bytes`` plus where it came from) and returns the
events it completes and the dead letters for records it could not parse. Sources differ only in
where records come from: files (see :mod:`secretscope.sources.files`, which also merges several
files by event time), Vault's socket audit device, Kafka.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable

from secretscope.errors import ParseError
from secretscope.events import AccessEvent, DeadLetter
from secretscope.parsers import FORMATS, detect_format
from secretscope.parsers.limits import InputLimits

Item = AccessEvent | DeadLetter
# How far ahead of this host's clock a live source (socket, Kafka) accepts an entry: far above
# NTP-level skew between a Vault node and this host, so a sane clock never loses entries, yet
# an entry dated years ahead cannot drag event time (windows, watermarks) with it.
LIVE_MAX_AHEAD_SECONDS = 3600.0


def dead_letter(raw: bytes, error: ParseError) -> DeadLetter:
    """A dead letter names origin and reason, and keeps a digest of the record, not the record."""
    return DeadLetter(
        origin=error.origin, reason=error.reason, detail=error.detail, field=error.field,
        digest=hashlib.sha256(raw).hexdigest(), size=len(raw),
    )


class Decoder:
    """Parses and joins one stream of records of one audit format.

    ``fmt`` names the format, or None to detect it from the first record that is of a
    supported format; records before that one are dead-lettered with the reason detection gave
    (so one garbled record at the head of a stream does not condemn the rest).

    ``max_ahead_seconds`` is for live sources: an entry timed further than that ahead of this
    host's clock is a ``bad_time`` dead letter. Event time only moves forward, so one such entry
    would otherwise move its identity's windows and the stream's latest time (from which Kafka
    watermarks are derived) years ahead. Replays of old logs leave it None.

    ``join_wait`` is for live sources too: records fed with the wall time they were received
    let :meth:`release_waiting` release a call whose other half has not come ``join_wait``
    seconds after its first entry was received, so a lost response holds later calls back for
    that long at most instead of ``join_timeout`` of event time. Replays leave it None, so
    what they join depends on the records alone.
    """

    def __init__(self, fmt: str | None = None, limits: InputLimits = InputLimits(),
                 join_timeout: float = 30.0, max_ahead_seconds: float | None = None,
                 clock: Callable[[], float] = time.time, join_wait: float | None = None) -> None:
        self.limits = limits
        self.join_timeout = join_timeout
        self.max_ahead_seconds = max_ahead_seconds
        self.clock = clock
        self.join_wait = join_wait
        # (origin, received) of the entries fed since the oldest waiting call's first one, in
        # feed order; origins are unique per record, so the head call's entry is found by it
        self._received: deque[tuple[str, float]] = deque()
        self.format = FORMATS[fmt] if fmt else None
        self.joiner = self.format.joiner(join_timeout=join_timeout,
                                         max_field_chars=limits.max_field_chars) if fmt else None
        # decodes and joins a record in one call, where the format's joiner can
        self._feed_line = getattr(self.joiner, "feed_line", None)
        self.dead_letters = 0

    @property
    def duplicates(self) -> int:
        return self.joiner.duplicates if self.joiner is not None else 0

    def feed(self, raw: bytes, origin: str, received: float | None = None) -> list[Item]:
        """Parse and join one record; ``received`` is its wall time of arrival (any clock, the
        one :meth:`release_waiting` is given), for live sources with ``join_wait``."""
        if len(raw) > self.limits.max_record_bytes:
            # before format detection, which would decode the whole record
            self.dead_letters += 1
            return [dead_letter(raw, ParseError(
                "oversize", f"{len(raw)} bytes > {self.limits.max_record_bytes}", origin))]
        if self.format is None:
            try:
                self.format = FORMATS[detect_format(raw, origin)]
            except ParseError as exc:
                self.dead_letters += 1
                return [dead_letter(raw, exc)]
            self.joiner = self.format.joiner(join_timeout=self.join_timeout,
                                             max_field_chars=self.limits.max_field_chars)
            self._feed_line = getattr(self.joiner, "feed_line", None)
        feed_line = self._feed_line
        if feed_line is not None:
            # None: a record for parse_entry, which says why
            ahead = self.max_ahead_seconds
            out = (feed_line(raw, origin, 0, self.limits.max_record_bytes) if ahead is None
                   else feed_line(raw, origin, 0, self.limits.max_record_bytes, self.clock(), ahead))
            if out is not None:
                if self.join_wait is not None and received is not None:
                    self._received.append((origin, received))
                return out
        try:
            entry = self.format.parse_entry(raw, origin, self.limits)
            if self.max_ahead_seconds is not None:
                self._check_not_ahead(entry.ts, origin)
        except ParseError as exc:
            self.dead_letters += 1
            return [dead_letter(raw, exc)]
        if self.join_wait is not None and received is not None:
            self._received.append((origin, received))
        return self.joiner.feed(entry)

    def waiting_since(self) -> float | None:
        """When the oldest call still waiting for its other half was received (the clock of
        ``feed``), or None when no call waits or it was fed without a time."""
        head = self.oldest_pending()
        received = self._received
        if head is None:
            received.clear()  # every entry fed so far is released: nothing left to time
            return None
        while received and received[0][0] != head.origin:
            received.popleft()  # entries of calls already released
        return received[0][1] if received else None

    def release_waiting(self, now: float) -> list[Item]:
        """Release, oldest first, the calls received more than ``join_wait`` before ``now``
        and still waiting, with the completed calls queued behind them. ``now`` must be a time
        before which every record that arrived has been fed (not the clock while records wait
        to be read or parsed), so a response that came in time is never given up on."""
        if self.join_wait is None:
            return []
        out: list[Item] = []
        while (since := self.waiting_since()) is not None and since <= now - self.join_wait:
            self._received.popleft()
            out += self.joiner.release_oldest()
        return out

    def _check_not_ahead(self, ts: float, origin: str) -> None:
        ahead = ts - self.clock()
        if ahead > self.max_ahead_seconds:
            raise ParseError("bad_time", f"{ahead:.0f} s ahead of this host's clock (a live "
                             f"source accepts {self.max_ahead_seconds:.0f} s)", origin, "time")

    def oldest_pending(self):
        """The earliest entry not yet emitted as part of an event, or None."""
        return self.joiner.oldest_pending() if self.joiner is not None else None

    @property
    def latest_ts(self) -> float:
        return self.joiner.latest_ts if self.joiner is not None else float("-inf")

    def flush(self) -> list[Item]:
        return self.joiner.flush() if self.joiner is not None else []
