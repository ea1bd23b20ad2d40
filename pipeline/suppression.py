"""What keeps an expected firing from becoming a finding: allowlist entries (with expiry),
deploy/rotation/maintenance windows (from config or a feed), and false-positive labels.

Every check uses event time, so a replay of last month is triaged as the live run was.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from pydantic import ValidationError

from secretscope.config import AllowEntry, ChangeWindow, Settings
from secretscope.errors import ConfigError
from secretscope.events import AccessEvent

# Why a firing did not become a new finding (counted per reason in ``Triage.quieted``).
ALLOWLIST, CHANGE_WINDOW, BELOW_MIN_SEVERITY, FALSE_POSITIVE, INCIDENT = (
    "allowlist", "change_window", "below_min_severity", "false_positive", "incident")


def _globs(patterns: Iterable[str]) -> re.Pattern | None:
    patterns = list(patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True)
class _Matcher:
    """An allowlist entry or change window compiled for matching."""

    identities: frozenset[str]
    display_names: re.Pattern | None
    policies: frozenset[str]
    segments: frozenset[str]
    detectors: re.Pattern | None
    start: float
    end: float
    label: str

    @classmethod
    def of(cls, entry: AllowEntry | ChangeWindow, start: float, end: float,
           label: str) -> "_Matcher":
        return cls(frozenset(entry.identities), _globs(entry.display_names),
                   frozenset(entry.policies), frozenset(getattr(entry, "segments", ())),
                   _globs(entry.detectors), start, end, label)

    def covers(self, event: AccessEvent, detector: str, segment: str) -> bool:
        """In time, for this detector, and for the identities (any selector) and the segments
        named; an entry naming only segments covers every identity there."""
        if not self.start <= event.ts < self.end:
            return False
        if self.detectors is not None and not self.detectors.match(detector):
            return False
        if self.segments and segment not in self.segments:
            return False
        if not (self.identities or self.display_names is not None or self.policies):
            return True
        return (event.identity in self.identities
                or (self.display_names is not None
                    and self.display_names.match(event.display_name) is not None)
                or not self.policies.isdisjoint(event.policies))


@dataclass(frozen=True)
class FalsePositivePattern:
    """Findings of ``identity`` led by ``reason_code`` are suppressed in [start, end)."""

    identity: str
    reason_codes: frozenset[str]
    start: float
    end: float


def false_positive_patterns(labels: Iterable, days: float) -> list[FalsePositivePattern]:
    """Patterns from ``Store.false_positive_labels()``: each silences its identity's findings
    with the same leading reason for ``days`` of event time after the labelled finding."""
    patterns = []
    for label in labels:
        start = label.finding_time.timestamp()
        patterns.append(FalsePositivePattern(label.identity, frozenset(label.reason_codes[:1]),
                                             start, start + days * 86400.0))
    return patterns


def load_change_window_feed(path: Path) -> list[ChangeWindow]:
    """One JSON object per line with the fields of ``ChangeWindow``; errors name file:line."""
    windows = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read change window feed: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            windows.append(ChangeWindow.model_validate(orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not JSON: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors())
            raise ConfigError(f"{path}:{number}: {problems}") from None
    return windows


class Suppressions:
    def __init__(self, allowlist: Sequence[AllowEntry] = (),
                 windows: Sequence[ChangeWindow] = (),
                 false_positives: Sequence[FalsePositivePattern] = ()) -> None:
        self._allow = [_Matcher.of(e, float("-inf"), e.expires.timestamp(), e.note)
                       for e in allowlist]
        self._windows = [_Matcher.of(w, w.start.timestamp(), w.end.timestamp(),
                                     f"{w.kind}: {w.note}" if w.note else w.kind)
                         for w in windows]
        self.set_false_positives(false_positives)

    @classmethod
    def from_settings(cls, settings: Settings,
                      false_positives: Sequence[FalsePositivePattern] = ()) -> "Suppressions":
        triage = settings.triage
        windows = list(triage.change_windows)
        if triage.change_window_feed:
            windows += load_change_window_feed(settings.resolve(triage.change_window_feed))
        return cls(triage.allowlist, windows, false_positives)

    def set_false_positives(self, patterns: Sequence[FalsePositivePattern]) -> None:
        by_identity: dict[str, list[FalsePositivePattern]] = {}
        for fp in patterns:
            by_identity.setdefault(fp.identity, []).append(fp)
        self._false = by_identity

    @property
    def windows(self) -> int:
        return len(self._windows)

    @property
    def allowlisted(self) -> int:
        return len(self._allow)

    def why_quiet(self, event: AccessEvent, detector: str, segment: str = "") -> str | None:
        """``ALLOWLIST`` or ``CHANGE_WINDOW`` if a firing of ``detector`` is expected."""
        for m in self._allow:
            if m.covers(event, detector, segment):
                return ALLOWLIST
        for m in self._windows:
            if m.covers(event, detector, segment):
                return CHANGE_WINDOW
        return None

    def labelled_false(self, event: AccessEvent, leading_reason: str) -> bool:
        for fp in self._false.get(event.identity, ()):
            if fp.start <= event.ts < fp.end and leading_reason in fp.reason_codes:
                return True
        return False
