"""File and stdin replay: plain or gzip files, several merged in event-time order.

Each file's format is detected from its first record. Lines that fail to parse become
:class:`~pipeline.events.DeadLetter` items in the stream, so the caller can store them and go on.
"""

from __future__ import annotations

import gzip
import heapq
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import ParseError
from pipeline.events import AccessEvent, DeadLetter
from pipeline.parsers import FORMATS, detect_format
from pipeline.parsers.limits import InputLimits
from pipeline.sources.decode import dead_letter

log = logging.getLogger(__name__)
STDIN = "-"


class ReplayCounters:
    """What a replay has read so far; read by progress output and the run summary."""

    __slots__ = ("lines", "dead_letters", "duplicates", "total_bytes", "_finished_bytes", "_open")

    def __init__(self, total_bytes: int) -> None:
        self.lines = 0
        self.dead_letters = 0
        self.duplicates = 0
        self.total_bytes = total_bytes
        self._finished_bytes = 0
        self._open: dict[str, BinaryIO] = {}

    def fraction_done(self) -> float | None:
        """Share of the input files' bytes on disk consumed so far (compressed bytes for .gz),
        or None when the size is unknown (stdin)."""
        if not self.total_bytes:
            return None
        done = self._finished_bytes
        for raw in self._open.values():
            try:
                done += raw.tell()
            except (OSError, ValueError):
                pass
        return min(1.0, done / self.total_bytes)


def _open(path: str) -> BinaryIO:
    if path == STDIN:
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _file_entries(path: str, limits: InputLimits, counters: ReplayCounters):
    """Yield (ts, seq, format, entry-or-dead-letter) for one file, ts non-decreasing enough for
    merging: dead letters take the time of the last good entry so they keep their place."""
    name = "stdin" if path == STDIN else path
    fmt = None
    last_ts = float("-inf")
    with _open(path) as fh:
        if path != STDIN:
            # the on-disk position: a gzip reader's own tell() counts decompressed bytes
            counters._open[path] = getattr(fh, "fileobj", None) or fh
        for lineno, raw in enumerate(fh, 1):
            counters.lines += 1
            if raw.isspace():
                continue
            origin = f"{name}:{lineno}"
            if fmt is None:
                try:
                    fmt = FORMATS[detect_format(raw, origin)]
                except ParseError as exc:
                    log.error("skipping %s: %s", name, exc)
                    counters.dead_letters += 1
                    yield last_ts, lineno, None, dead_letter(raw, exc)
                    break
            try:
                entry = fmt.parse_entry(raw, origin, limits)
            except ParseError as exc:
                counters.dead_letters += 1
                yield last_ts, lineno, fmt.name, dead_letter(raw, exc)
                continue
            last_ts = entry.ts
            yield last_ts, lineno, fmt.name, entry
    if path != STDIN:
        counters._open.pop(path, None)
        counters._finished_bytes += _total_size([path])


def replay(paths: Iterable[str | Path], limits: InputLimits = InputLimits(),
           join_timeout: float = 30.0, counters: ReplayCounters | None = None
           ) -> Iterator[AccessEvent | DeadLetter]:
    """Events from all ``paths`` in event-time order, with dead letters where lines failed."""
    paths = [str(p) for p in paths]
    if counters is None:
        counters = ReplayCounters(_total_size(paths))
    streams = [_file_entries(p, limits, counters) for p in paths]
    merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda item: item[0])
    joiners = {name: fmt.joiner(join_timeout=join_timeout, max_field_chars=limits.max_field_chars)
               for name, fmt in FORMATS.items()}
    for _ts, _seq, fmt_name, item in merged:
        if isinstance(item, DeadLetter):
            yield item
            continue
        yield from joiners[fmt_name].feed(item)
    for joiner in joiners.values():
        yield from joiner.flush()
        counters.duplicates += joiner.duplicates


def _total_size(paths: list[str]) -> int:
    total = 0
    for p in paths:
        if p != STDIN:
            try:
                total += Path(p).stat().st_size
            except OSError:
                pass
    return total
