"""File and stdin replay: plain or gzip files, several merged in event-time order.

Each file's format is detected from its first record of a supported format. A file with lines
but no such record (a CSV file, a log of another kind) is not an audit log: :func:`check_format`
says so before a replay starts, and a stream read to its end without one (stdin) is listed in
``ReplayCounters.unrecognised``; an empty file is an empty log. Lines that fail to parse, lines
over ``max_record_bytes`` (skipped as they stream, never held whole) and the cut of a truncated
or corrupt ``.gz`` become :class:`~secretscope.events.DeadLetter` items in the stream, so the
caller can store them and go on; cut files are also listed in ``ReplayCounters.incomplete``.
"""

from __future__ import annotations

import gzip
import heapq
import logging
import sys
import zlib
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

from secretscope.errors import InputFormatError, ParseError, UsageError
from secretscope.events import AccessEvent, DeadLetter
from secretscope.parsers import FORMATS, detect_format
from secretscope.parsers.limits import InputLimits
from secretscope.sources.decode import dead_letter

log = logging.getLogger(__name__)
STDIN = "-"
_SKIP_BYTES = 1 << 20  # piece size when reading past the rest of an oversize line


class ReplayCounters:
    """What a replay has read so far; read by progress output and the run summary."""

    __slots__ = ("lines", "dead_letters", "duplicates", "self_tests", "total_bytes", "incomplete",
                 "unrecognised", "_finished_bytes", "_open")

    def __init__(self, total_bytes: int) -> None:
        self.lines = 0
        self.dead_letters = 0
        self.duplicates = 0
        self.self_tests = 0  # audit devices' start-up self-test entries (not calls), dropped
        self.total_bytes = total_bytes
        self.incomplete: list[str] = []  # "file: why reading stopped after N lines", one per cut file
        self.unrecognised: list[str] = []  # inputs with lines but no audit record, and why
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
    # 64 KiB reads rather than the default 8 KiB: audit lines run to kilobytes, and each refill
    # of the buffer costs more than the lines it holds (0.73 against 0.44 us a line measured)
    return open(path, "rb", buffering=1 << 16)


def _file_entries(path: str, limits: InputLimits, counters: ReplayCounters,
                  joiners: dict | None = None):
    """Yield (ts, seq, format, entry-or-dead-letter) for one file, ts non-decreasing enough for
    merging: dead letters take the time of the last good entry so they keep their place.

    With ``joiners`` (format name -> joiner, for a replay of this file alone: nothing to merge),
    the lines after the first record go to their joiner 64 KiB at a time where it can decode
    them (``feed_chunk``, see :class:`_Pieces`), and the events it completes come out as (ts,
    seq, None, event): a format of None marks an item that needs no joining, as for dead
    letters.

    Lines are read at most ``max_record_bytes + 1`` at a time, so an oversize line is never held
    whole. The format is detected from the first line that is of a supported one; lines before it
    are dead-lettered, so a cut-off or foreign first line does not condemn the rest. A read that
    fails (a truncated or corrupt ``.gz``) ends the file: the lines before it are kept, and the
    cut is recorded in ``counters.incomplete`` and as a "truncated" dead letter.
    """
    name = "stdin" if path == STDIN else path
    fmt = None
    refused: ParseError | None = None  # why the first line that was not blank was not a record
    last_ts = float("-inf")
    cap = limits.max_record_bytes + 1
    feed_chunk = pieces = None
    lineno = 0
    with _open(path) as fh:
        if path != STDIN:
            # the on-disk position: a gzip reader's own tell() counts decompressed bytes
            counters._open[path] = getattr(fh, "fileobj", None) or fh
        try:
            # iter(readline) keeps the loop in C; each read is bounded by cap
            for raw in iter(partial(fh.readline, cap), b""):
                lineno += 1
                counters.lines += 1
                if len(raw) == cap and raw[-1] != 10:
                    counters.dead_letters += 1
                    yield last_ts, lineno, None, _skip_oversize(fh, raw, limits, f"{name}:{lineno}")
                    continue
                if fmt is None:
                    if raw.isspace():
                        continue
                    try:
                        fmt = FORMATS[detect_format(raw, f"{name}:{lineno}")]
                    except ParseError as exc:
                        refused = refused or exc
                        counters.dead_letters += 1
                        yield last_ts, lineno, None, dead_letter(raw, exc)
                        continue
                    parse = fmt.parse_entry
                    feed_chunk = getattr(joiners[fmt.name], "feed_chunk", None) if joiners else None
                try:
                    entry = parse(raw, name, limits, lineno)
                except ParseError as exc:
                    if raw.isspace():  # a blank line is not a record: skipped, not refused
                        continue
                    counters.dead_letters += 1
                    yield last_ts, lineno, fmt.name, dead_letter(raw, exc)
                    continue
                last_ts = entry.ts
                yield last_ts, lineno, fmt.name, entry
                if feed_chunk is not None:  # the rest of the file in pieces
                    pieces = _Pieces(fh, name, lineno, limits, counters, fmt.name, feed_chunk)
                    break
            if pieces is not None:
                yield from pieces
        except (EOFError, OSError, zlib.error) as exc:
            if pieces is not None:
                lineno = pieces.lineno
            cut = f"{_cut_reason(exc)} after {lineno:,} lines"
            log.error("input incomplete: %s: %s", name, cut)
            counters.incomplete.append(f"{name}: {cut}")
            counters.dead_letters += 1
            yield last_ts, lineno + 1, None, dead_letter(b"", ParseError(
                "truncated", cut, f"{name}:{lineno + 1}"))
            refused = None  # a cut stream is reported as incomplete, not as foreign
    if fmt is None and refused is not None:
        counters.unrecognised.append(not_an_audit_log(name, lineno, refused))
    if path != STDIN:
        counters._open.pop(path, None)
        counters._finished_bytes += _total_size([path])


_PIECE = 1 << 16  # bytes read at a time once a file's lines go to its joiner in pieces


class _Pieces:
    """The rest of a file after its first record, read 64 KiB at a time, each piece's lines
    decoded and joined by one call (``feed_chunk``) instead of one call a line: (ts, seq,
    None, event) items, and (ts, seq, format, entry-or-dead-letter) for the lines the joiner
    declines, which ``parse_entry`` reads as the line loop of :func:`_file_entries` would.

    At most ``max_record_bytes`` of an unended line are held: a longer one is skipped to its
    end as that loop skips it, with the same dead letter. ``lineno`` is the last line read. The
    times of the items are 0: a file read in pieces is not merged with another.
    """

    def __init__(self, fh: BinaryIO, name: str, lineno: int, limits: InputLimits,
                 counters: ReplayCounters, fmt_name: str, feed_chunk) -> None:
        self.fh, self.name, self.lineno, self.limits = fh, name, lineno, limits
        self.counters, self.fmt_name, self.feed_chunk = counters, fmt_name, feed_chunk

    def __iter__(self):
        fh, name, limits, counters, feed_chunk = (self.fh, self.name, self.limits, self.counters,
                                                  self.feed_chunk)
        cap, max_bytes = limits.max_record_bytes + 1, limits.max_record_bytes
        # read1: what one read gives, so a pipe's lines are not held back to fill a piece
        read = getattr(fh, "read1", None) or fh.read
        rest = b""  # the start of a line whose newline has not been read yet
        while piece := read(_PIECE):
            if rest:
                # the line begun in the pieces before ends in this one: fed alone, so only
                # that line is copied, not the whole piece
                newline = piece.find(b"\n") + 1
                if not newline:
                    rest += piece
                    piece = b""
                parts = ((rest + piece[:newline], 0), (piece, newline)) if newline else ()
            else:
                parts = ((piece, 0),)
            for data, pos in parts:
                while True:
                    events, pos, taken, declined = feed_chunk(data, pos, name, self.lineno,
                                                              max_bytes)
                    self.lineno += taken
                    counters.lines += taken
                    for event in events:
                        yield 0.0, self.lineno, None, event
                    if not declined:
                        break
                    end = data.index(b"\n", pos) + 1
                    yield from self._line(data[pos:end], cap)
                    pos = end
                rest = data[pos:]
            if len(rest) >= cap:  # no end within cap bytes: skipped, never held whole
                self.lineno += 1
                counters.lines += 1
                counters.dead_letters += 1
                yield 0.0, self.lineno, None, _skip_oversize(fh, rest, limits,
                                                             f"{name}:{self.lineno}")
                rest = b""
        if rest:  # the last line, without a newline
            yield from self._line(rest, cap)

    def _line(self, raw: bytes, cap: int):
        """A line the joiner declined (or the last, unended): as the line loop reads it."""
        self.lineno += 1
        self.counters.lines += 1
        origin = f"{self.name}:{self.lineno}"
        if len(raw) > cap or (len(raw) == cap and raw[-1] != 10):
            # longer than the loop reads at once: its dead letter, as skipped there
            self.counters.dead_letters += 1
            yield 0.0, self.lineno, None, _oversize(raw[:cap], len(raw) - (raw[-1] == 10),
                                                    self.limits, origin)
            return
        try:
            entry = FORMATS[self.fmt_name].parse_entry(raw, self.name, self.limits, self.lineno)
        except ParseError as exc:
            if not raw.isspace():  # a blank line is not a record: skipped, not refused
                self.counters.dead_letters += 1
                yield 0.0, self.lineno, self.fmt_name, dead_letter(raw, exc)
            return
        yield 0.0, self.lineno, self.fmt_name, entry


def not_an_audit_log(name: str, lines: int, first: ParseError) -> str:
    which = "its one line is not" if lines == 1 else f"none of its {lines:,} lines is"
    return (f"{name}: not an audit log: {which} a record of a format secretscope reads "
            f"({', '.join(FORMATS)}); first refused: {first}")


def check_format(path: str, limits: InputLimits = InputLimits()) -> str | None:
    """The audit format of file ``path``'s first record, read no further than that record.

    Raises :class:`InputFormatError` when the file has lines but none is a record of a supported
    format, and :class:`UsageError` when it cannot be opened. None for an empty file, or when
    reading fails before the first record (a corrupt ``.gz``: the replay reports the cut).
    """
    cap = limits.max_record_bytes + 1
    lineno, refused = 0, None
    try:
        fh = _open(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with fh:
        try:
            for raw in iter(partial(fh.readline, cap), b""):
                lineno += 1
                origin = f"{path}:{lineno}"
                if len(raw) == cap and raw[-1] != 10:
                    skipped = _skip_oversize(fh, raw, limits, origin)
                    refused = refused or ParseError(skipped.reason, skipped.detail, origin)
                    continue
                if raw.isspace():
                    continue
                try:
                    return detect_format(raw, origin)
                except ParseError as exc:
                    refused = refused or exc
        except (EOFError, OSError, zlib.error):
            return None
    if refused is None:
        return None
    raise InputFormatError(not_an_audit_log(path, lineno, refused))


def _skip_oversize(fh: BinaryIO, head: bytes, limits: InputLimits, origin: str) -> DeadLetter:
    """Read past the rest of an oversize line in bounded pieces, counting its size; the dead
    letter's digest and size cover the first ``max_record_bytes``, all that was ever held of it
    (as the socket source does); the detail gives the full size."""
    size = len(head)
    while chunk := fh.readline(_SKIP_BYTES):
        if chunk[-1] == 10:
            size += len(chunk) - 1
            break
        size += len(chunk)
    return _oversize(head, size, limits, origin)


def _oversize(head: bytes, size: int, limits: InputLimits, origin: str) -> DeadLetter:
    """The dead letter of a line of ``size`` bytes (without its newline) that starts with
    ``head``: the digest of its first ``max_record_bytes``."""
    limit = limits.max_record_bytes
    return dead_letter(head[:limit], ParseError(
        "oversize", f"{size} bytes > {limit} (digest of the first {limit})", origin))


def _cut_reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "compressed stream ended before the end-of-stream marker"
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a valid gzip stream ({exc})"
    if isinstance(exc, zlib.error):
        return f"corrupt compressed data ({exc})"
    return f"read failed ({getattr(exc, 'strerror', None) or exc})"


def replay(paths: Iterable[str | Path], limits: InputLimits = InputLimits(),
           join_timeout: float = 30.0, counters: ReplayCounters | None = None
           ) -> Iterator[AccessEvent | DeadLetter]:
    """Events from all ``paths`` in event-time order, with dead letters where lines failed."""
    paths = [str(p) for p in paths]
    if counters is None:
        counters = ReplayCounters(_total_size(paths))
    joiners = {name: fmt.joiner(join_timeout=join_timeout, max_field_chars=limits.max_field_chars)
               for name, fmt in FORMATS.items()}
    if len(paths) == 1:
        merged = _file_entries(paths[0], limits, counters, joiners)
    else:
        merged = heapq.merge(*(_file_entries(p, limits, counters) for p in paths),
                             key=lambda item: item[0])
    feeds = {name: joiner.feed for name, joiner in joiners.items()}
    for _ts, _seq, fmt_name, item in merged:
        if fmt_name is None or item.__class__ is DeadLetter:  # an event, or a dead letter
            yield item
            continue
        yield from feeds[fmt_name](item)
    for joiner in joiners.values():
        yield from joiner.flush()
        counters.duplicates += joiner.duplicates
        counters.self_tests += getattr(joiner, "self_tests", 0)


def _total_size(paths: list[str]) -> int:
    total = 0
    for p in paths:
        if p != STDIN:
            try:
                total += Path(p).stat().st_size
            except OSError:
                pass
    return total
