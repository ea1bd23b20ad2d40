"""The processing loop: micro-batches through features, detectors, triage and storage.

Order inside a batch (score, then learn):

1. ``observe`` every event: windows updated, features read against the baseline;
2. rules, then the detectors score the whole batch (vectorized) and learn only from rows
   nothing fired on;
3. triage turns firings into finding versions (Create, Update, Close) in event time;
4. events that raised nothing are folded into their identity's baseline;
5. finding versions and dead letters are written.

No business logic lives here; it wires the parts together and counts.
"""

from __future__ import annotations

import gc
import logging
import struct
import sys
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from itertools import starmap
from operator import attrgetter
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import orjson

from secretscope.models.base import ScoreBatch
from secretscope.models.ensemble import SEVERITY_SCORE, combine, rule_score, severity_of
from secretscope.models.registry import build_detectors
from secretscope.models.rules import SEVERITIES, RuleSet, load_rules
from secretscope.config import Settings
from secretscope.events import DENIED, SUCCESS, AccessEvent, DeadLetter
from secretscope.features import FEATURE_NAMES, FeatureExtractor, FeatureVector, Undo, Windows
from secretscope.findings import CLOSE, CREATE, Finding, to_ocsf
from secretscope.history import HistoryRecorder
from secretscope.store import Store
from secretscope.explain import explainer
from secretscope.suppression import Suppressions, false_positive_patterns
from secretscope.triage import StreamingDetectorInfo, Triage

log = logging.getLogger(__name__)
_LOGGED_DEAD_LETTERS = 20  # a file of garbage must not flood the log


@dataclass
class RunStats:
    events: int = 0
    dead_letters: int = 0
    findings: int = 0  # findings created
    updates: int = 0  # Update versions (incidents that grew)
    closes: int = 0  # Close versions (incidents that went quiet)
    truncated_fields: int = 0
    # work of the runner's redo after flagged rows: extractor learns, unlearns and derives, and
    # rows the detectors scored (each is the number of events when nothing was flagged)
    learns: int = 0
    unlearns: int = 0
    derives: int = 0
    scored: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class _Recent:
    """An identity's recent-event lists as they were before a batch, so the events a finding
    names are those the identity had at its trigger, whatever came later in the batch.

    The bounded ``recent`` list is not copied whole: only the entries the batch's ``appends``
    will push out of it are; the rest is read back from the live list afterwards."""

    __slots__ = ("evicted", "live", "appends", "denied", "failed", "newest")

    def __init__(self, st, appends: int) -> None:
        self.appends = appends
        if st is None:
            self.evicted, self.live, self.denied, self.failed = [], (), [], []
            self.newest = float("-inf")
            return
        live = self.live = st.recent
        out = len(live) + appends - live.maxlen
        self.evicted = live.win.recent_items(0, out) if out > 0 else []
        self.denied = st.win.denied_items()
        self.failed = st.win.failed_items()
        self.newest = st.newest_ts

    @property
    def recent(self) -> list:
        """The ``recent`` list before the batch (once the whole batch has been observed)."""
        live = list(self.live)
        return self.evicted + live[:len(live) - min(self.appends, len(live))]


# kind -> (which list, its length limit, its horizon in seconds); see IdentityState
_RELATED = {"denied_5m": ("denied", 256, 300.0), "login_failed_5m": ("failed", 256, 300.0)}
_RECENT = ("recent", 64, 3600.0)


def _denied(e: AccessEvent) -> bool:
    return e.outcome == DENIED


def _login_failed(e: AccessEvent) -> bool:
    return e.is_login and e.outcome != SUCCESS


_KEEPS = {"recent": None, "denied": _denied, "failed": _login_failed}


class _Batch:
    """Per-row working state of one batch: windows, features, rule hits, learn undo records."""

    def __init__(self, events: list[AccessEvent], windows: list[Windows],
                 groups: list, before: dict[str, _Recent]) -> None:
        n = len(events)
        self.events = events
        self.windows = windows
        self.before = before
        # A learn changes its identity's baseline and its peer group's: rows of the same group
        # are the ones that see each other's learns.
        self.groups = groups
        self._members: dict[int, list[int]] | None = None  # id(group) -> its rows, built on use
        self._identity_rows: dict[str, list[int]] | None = None
        self.vectors: list[FeatureVector] = [None] * n  # type: ignore[list-item]
        self.values = np.empty((n, len(FEATURE_NAMES)))  # the vectors' values, row-aligned
        self.hits: list[tuple] = [()] * n
        self.ruled = np.zeros(n, dtype=bool)  # rows a rule hit: kept out of detector learning
        self.undo: list[Undo | None] = [None] * n
        self.learns = self.unlearns = self.derives = self.scored = 0
        self._taken_out: dict[int, list[int]] = {}  # id(group) -> rows baseline_as_of took out

    def later(self, i: int) -> list[int]:
        """Rows after row i of its group: those that see row i's learn."""
        if self._members is None:
            members: dict[int, list[int]] = {}
            for j, group in enumerate(self.groups):
                members.setdefault(id(group), []).append(j)
            self._members = members
        rows = self._members[id(self.groups[i])]
        return rows[bisect_right(rows, i):]

    def _rows_of(self, identity: str) -> list[int]:
        """The identity's rows, in order (built on first use: only findings need them)."""
        if self._identity_rows is None:
            rows: dict[str, list[int]] = {}
            for j, e in enumerate(self.events):
                rows.setdefault(e.identity, []).append(j)
            self._identity_rows = rows
        return self._identity_rows[identity]

    def learn(self, extractor: FeatureExtractor, i: int) -> None:
        self.undo[i] = extractor.learn(self.vectors[i])
        self.learns += 1

    def unlearn(self, extractor: FeatureExtractor, i: int) -> None:
        if self.undo[i] is not None:
            extractor.unlearn(self.vectors[i], self.undo[i])
            self.undo[i] = None
            self.unlearns += 1

    def related(self, i: int, kind: str) -> list[str]:
        """Ids of row i's identity's recent events of ``kind`` up to and including row i, as a
        one-event-at-a-time run would have them: the lists from before the batch plus the
        identity's rows up to i, cut to their length, and to the horizon before the newest
        event time the identity had reached (older entries might have been dropped by then)."""
        trigger = self.events[i]
        name, limit, horizon = _RELATED.get(kind, _RECENT)
        before = self.before[trigger.identity]
        items = list(getattr(before, name))
        keep = _KEEPS[name]
        newest = before.newest
        events = self.events
        for j in self._rows_of(trigger.identity):
            if j > i:
                break
            e = events[j]
            if e.ts > newest:
                newest = e.ts
            if keep is None or keep(e):
                items.append((e.ts, e.event_id))
        floor = max(newest, trigger.ts) - horizon
        return [eid for ts, eid in items[-limit:] if floor < ts <= trigger.ts]

    @contextmanager
    def baseline_as_of(self, extractor: FeatureExtractor, i: int):
        """Row i's group's baseline as it was when row i was scored, so its finding is
        explained against it: the learns of the group's later rows are taken out until
        :meth:`put_back`. Rows are explained in order, so moving on to a later row of the same
        group only puts back the learns up to it: each learn is taken out and put back at most
        once per triage, however many rows of the group are explained."""
        out = self._taken_out.setdefault(id(self.groups[i]), [])
        back = bisect_right(out, i)
        for j in out[:back]:  # oldest first: the group's learns happen in their order again
            self.learn(extractor, j)
        del out[:back]
        later = [j for j in self.later(i) if self.undo[j] is not None]
        for j in reversed(later):
            self.unlearn(extractor, j)
        out[:0] = later
        yield

    def put_back(self, extractor: FeatureExtractor) -> None:
        """Learn again, in order, what ``baseline_as_of`` took out."""
        for out in self._taken_out.values():
            for j in out:
                self.learn(extractor, j)
        self._taken_out.clear()


class Pipeline:
    """Everything between an event and a stored finding, for one stream of events."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 alerts_out: TextIO | None = None,
                 on_version: Callable[[Finding], None] | None = None,
                 defer_writes: bool = False) -> None:
        """``alerts_out`` gets one OCSF line per finding version, ``on_version`` each version.
        ``defer_writes``: hold versions for :meth:`take_unsaved` instead of writing them at
        once, for a caller that stores them with its processing progress (the Kafka score stage
        writes them in its snapshot transaction)."""
        self.settings = settings
        self.extractor = FeatureExtractor.for_settings(settings)
        self.segments = self.extractor.segments
        self.rules = RuleSet(load_rules(settings.rules_dir()))
        self.detectors = build_detectors(settings.detectors, settings.base_dir)
        self.store = store
        self._labels_read = time.monotonic()
        self.triage = Triage(
            self.extractor, settings.triage,
            [StreamingDetectorInfo(d.name, d.threshold, d.high_threshold, explain=explainer(d),
                                   at_threshold=SEVERITY_SCORE[SEVERITIES[s.severity_at_threshold]])
             for d, s in zip(self.detectors, settings.detectors)],
            Suppressions.from_settings(settings, self._false_positives()),
        )
        self.history = HistoryRecorder(store, settings.store.feature_history_sample)
        self._min_severity = SEVERITIES[settings.triage.min_severity]
        self.alerts_out = alerts_out
        self.on_version = on_version
        self.defer_writes = defer_writes
        self._unsaved: list[Finding] = []  # versions not yet in the store (defer_writes)
        self.stats = RunStats()
        # windows come from a split replay's reader process (secretscope.replay_split)
        self.windows_relayed = False

    def process_batch(self, events: list[AccessEvent]) -> list[Finding]:
        """Process events in order; return (and emit) the findings they raised.

        The result is exactly that of handling the events one at a time (so findings do not
        depend on how the stream was batched), while rules and detectors score whole batches:

        * windows are recorded for every event first (they do not depend on the baseline);
        * baseline features follow event by event, each event *optimistically* folded into its
          identity's baseline at once (almost none raises anything);
        * rules are evaluated on the batch's feature matrix, then detectors score it vectorized,
          learning only rows nothing fired on;
        * a row a rule or detector flagged was learned too early: it is unlearned, and only the
          later rows of its group (its identity's peer group, the rows that saw that learn) are
          derived again, one at a time; after a detector's flag the detectors re-run from a
          checkpoint. Flagged rows are rare, so this costs little, whatever the batch size.
        """
        n = len(events)
        if not n:
            return []
        self._refresh_labels()
        batch = self._observe(events)
        self._derive_all(batch)
        self._rules(batch)
        findings: list[Finding] = []
        start = 0
        while start < n:
            checkpoints = [d.checkpoint() for d in self.detectors]
            scores = self._score(batch, start)
            redo_at = self._settle(batch, start, scores)
            if redo_at is None:
                findings += self._triage(batch, start, n, scores)
                break
            # Rows after `redo_at` of its peer group saw a learn that must not have happened.
            later = batch.later(redo_at)
            for j in reversed([redo_at] + later):
                batch.unlearn(self.extractor, j)
            for detector, checkpoint in zip(self.detectors, checkpoints):
                detector.restore(checkpoint)
            scores = self._score(batch, start, redo_at + 1)
            findings += self._triage(batch, start, redo_at + 1, scores)
            for j in later:
                self._derive(batch, j)
            start = redo_at + 1
        self._count(batch)
        self.history.record(batch.vectors, batch.undo)  # learned rows only: nothing fired
        self._emit(findings)
        return findings

    def _observe(self, events: list[AccessEvent]) -> "_Batch":
        """The identities' recent lists as they were, then every event into the windows."""
        identities = self.extractor.identities
        appends: dict[str, int] = {}
        for e in events:
            appends[e.identity] = appends.get(e.identity, 0) + 1
        before = {identity: _Recent(identities.get(identity), k)
                  for identity, k in appends.items()}
        observe = (self.extractor.observe_relayed if self.windows_relayed
                   else self.extractor.observe_windows)
        windows = [observe(e) for e in events]
        return _Batch(events, windows, [w.peer for w in windows], before)

    def _derive_all(self, batch: "_Batch") -> None:
        """Baseline features of every row, each learned at once (see ``process_batch``)."""
        derive, learn = self.extractor.derive, self.extractor.learn
        vectors, undo = batch.vectors, batch.undo
        for i, (event, w) in enumerate(zip(batch.events, batch.windows)):
            fv = vectors[i] = derive(event, w)
            undo[i] = learn(fv)
        n = len(vectors)
        batch.learns += n
        batch.derives += n
        batch.values = _matrix(vectors)

    def _rules(self, batch: "_Batch") -> None:
        """Rule hits of every row; a row whose hits raise a finding leaves the baseline, and the
        later rows of its group are derived again (with their rules) one at a time."""
        hits = batch.hits = self.rules.evaluate_batch(batch.vectors, batch.values)
        hit_rows = [i for i, h in enumerate(hits) if h]
        if not hit_rows:
            return
        batch.ruled[hit_rows] = True
        redone: set[int] = set()
        for k in hit_rows:
            if id(batch.groups[k]) in redone:
                continue  # derived again one at a time, its rules with it
            if not self._raises(batch.hits[k]):
                continue
            later = batch.later(k)
            for j in reversed([k] + later):
                batch.unlearn(self.extractor, j)
            if later:
                redone.add(id(batch.groups[k]))
                for j in later:
                    self._derive(batch, j)

    def _count(self, batch: "_Batch") -> None:
        stats = self.stats
        stats.events += len(batch.events)
        stats.truncated_fields += sum(len(e.truncated) for e in batch.events if e.truncated)
        stats.learns += batch.learns
        stats.unlearns += batch.unlearns
        stats.derives += batch.derives
        stats.scored += batch.scored
    def _false_positives(self) -> list:
        if self.store is None:
            return []
        return false_positive_patterns(self.store.false_positive_labels(),
                                       self.settings.triage.false_positive_days)

    def _refresh_labels(self) -> None:
        """Analysts label findings while the service runs: their verdicts are read again every
        ``triage.labels_refresh_seconds`` of wall-clock time (it is about the store, not about
        the events)."""
        if self.store is None:
            return
        now = time.monotonic()
        if now - self._labels_read >= self.settings.triage.labels_refresh_seconds:
            self._labels_read = now
            self.triage.suppressions.set_false_positives(self._false_positives())
            held = self.triage.open_findings() + self.triage.reopenable_findings()
            if held:
                self.triage.closed_by_analyst(self.store.closed_by_analyst(held))
                self.triage.acknowledged_by_analyst(self.store.acknowledged_by_analyst(held))

    def _derive(self, batch: "_Batch", i: int) -> None:
        """Row i derived again: baseline features and rules, then learned unless rules raise a
        finding on it.

        Rules that fire below ``min_severity`` (a low signal such as a policy write by a role
        not yet seen writing one) are counted, not raised: their event is learned, or an SRE
        team's first policy writes would never become part of its role and every later one
        would look like the first."""
        fv = self.extractor.derive(batch.events[i], batch.windows[i])
        hits = self.rules.evaluate_one(fv)
        batch.vectors[i] = fv
        if not batch.values.flags.writeable:
            batch.values = batch.values.copy()
        batch.values[i] = fv.values
        batch.hits[i] = hits
        batch.ruled[i] = bool(hits)
        batch.derives += 1
        if not self._raises(hits):
            batch.learn(self.extractor, i)
    def _raises(self, hits: tuple) -> bool:
        if not hits:
            return False
        if len(hits) == 1:
            return hits[0].severity_id >= self._min_severity
        return severity_of(combine(rule_score(r.severity_id) for r in hits)) >= self._min_severity

    def _score(self, batch: "_Batch", start: int, end: int | None = None) -> list[ScoreBatch]:
        rows = batch.vectors[start:end]
        exclude = batch.ruled[start:end]
        values = batch.values[start:end]
        batch.scored += len(rows)
        scores = []
        for detector in self.detectors:
            sb = detector.score_then_learn(rows, exclude, values)
            exclude = exclude | sb.fired
            scores.append(sb)
        return scores

    def _settle(self, batch: "_Batch", start: int, scores: list[ScoreBatch]) -> int | None:
        """Unlearn rows detectors flagged; return the first such row whose peer group has later
        rows in the batch (those need deriving again), or None."""
        fired = np.zeros(len(batch.events) - start, dtype=bool)
        for sb in scores:
            fired |= sb.fired
        for offset in np.flatnonzero(fired).tolist():
            k = start + offset
            if batch.undo[k] is None:
                continue  # a rule had already kept it out of the baseline
            if batch.later(k):
                return k
            batch.unlearn(self.extractor, k)
        return None

    def _triage(self, batch: "_Batch", start: int, end: int,
                scores: list[ScoreBatch]) -> list[Finding]:
        def as_of(offset: int):
            return batch.baseline_as_of(self.extractor, start + offset)

        def related(offset: int, kind: str) -> list[str]:
            return batch.related(start + offset, kind)

        try:
            return self.triage.decide(batch.vectors[start:end], batch.hits[start:end], scores,
                                      as_of, related, batch.ruled[start:end])
        finally:
            batch.put_back(self.extractor)

    def finish(self) -> list[Finding]:
        """End of input: emit the updates still waiting in coalescing (open incidents stay
        open). Called by :meth:`run` when its source ends."""
        versions = self.triage.finish()
        self._emit(versions)
        return versions

    def _emit(self, versions: list[Finding]) -> None:
        """Finding versions go everywhere, in order: the store (finding, version, outbox rows),
        the alerts file (one line per version) and ``on_version``."""
        if not versions:
            return
        for f in versions:
            if f.activity_id == CREATE:
                self.stats.findings += 1
            elif f.activity_id == CLOSE:
                self.stats.closes += 1
            else:
                self.stats.updates += 1
        if self.defer_writes:
            self._unsaved.extend(versions)
        elif self.store is not None:
            self.store.add_versions(versions)
        if self.alerts_out is not None:
            self.alerts_out.write("".join(orjson.dumps(to_ocsf(f)).decode() + "\n"
                                          for f in versions))
        if self.on_version is not None:
            for f in versions:
                self.on_version(f)

    def take_unsaved(self) -> list[Finding]:
        """The versions held since the last call (``defer_writes``), in order."""
        versions, self._unsaved = self._unsaved, []
        return versions

    def dead_letter(self, items: list[DeadLetter]) -> None:
        for d in items:
            logged = self.stats.dead_letters
            if logged < _LOGGED_DEAD_LETTERS:
                log.warning("dead letter: %s: %s%s: %s", d.origin, d.reason,
                            f" (field {d.field})" if d.field else "", d.detail)
            elif logged == _LOGGED_DEAD_LETTERS:
                log.warning("more dead letters: counted and stored, no longer logged one by one")
            self.stats.dead_letters += 1
            self.stats.dead_letter_reasons[d.reason] = self.stats.dead_letter_reasons.get(d.reason, 0) + 1
        if self.store is not None:
            self.store.add_dead_letters(items)

    def run(self, items: Iterable[AccessEvent | DeadLetter | None],
            progress: Callable[[RunStats], None] | None = None) -> RunStats:
        """Consume a stream of events and dead letters to its end. A ``None`` item means the
        source is idle: the events held so far are processed without waiting for a full batch."""
        with _fewer_collections():
            return self._run(items, progress)

    def _run(self, items: Iterable[AccessEvent | DeadLetter | None],
             progress: Callable[[RunStats], None] | None) -> RunStats:
        size = self.settings.runner.batch_size
        interval = self.settings.runner.progress_seconds
        started = last_report = time.perf_counter()
        events: list[AccessEvent] = []
        letters: list[DeadLetter] = []
        for item in items:
            if type(item) is AccessEvent:
                events.append(item)
                if len(events) < size:
                    continue
            elif item is not None:
                letters.append(item)
                continue
            # a full batch, or None: the source is idle, so process what is held now
            if events:
                self.process_batch(events)
                events = []
            if letters:
                self.dead_letter(letters)
                letters = []
            if progress is not None:
                now = time.perf_counter()
                if now - last_report >= interval:
                    last_report = now
                    self.stats.seconds = now - started
                    progress(self.stats)
        if events:
            self.process_batch(events)
        if letters:
            self.dead_letter(letters)
        self.finish()
        self.stats.seconds = time.perf_counter() - started
        return self.stats


_ROW = struct.Struct(f"={len(FEATURE_NAMES)}d")
_VALUES = attrgetter("values")


def _matrix(vectors: list[FeatureVector]) -> np.ndarray:
    """The (rows x features) float64 matrix of the vectors' values, read-only. Packing each row
    with struct and joining the bytes costs half what ``np.fromiter`` over the flattened
    values does (the batch's largest cost outside features and detectors before)."""
    packed = b"".join(starmap(_ROW.pack, map(_VALUES, vectors)))
    return np.frombuffer(packed, dtype=np.float64).reshape(len(vectors), len(FEATURE_NAMES))


@contextmanager
def _fewer_collections(young: int = 20_000):
    """Each event allocates a handful of short-lived containers; with the default young
    generation of 700 the collector runs every ~100 events and walks long-lived identity state
    more often than it needs to. A larger young generation for the run, restored afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], young), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def stderr_progress(counters) -> Callable[[RunStats], None]:
    """Progress lines for long replays: how far through the input, rate, findings so far."""

    def report(stats: RunStats) -> None:
        fraction = counters.fraction_done() if counters is not None else None
        done = f" ({100 * fraction:.0f}% of input)" if fraction is not None else ""
        print(f"secretscope: {stats.events:,} calls{done}, {stats.events_per_second:,.0f} calls/s, "
              f"{stats.findings:,} findings, {stats.dead_letters:,} dead letters",
              file=sys.stderr, flush=True)

    return report
