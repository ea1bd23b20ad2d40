"""The processing loop: micro-batches through features, detectors, triage and storage.

Order inside a batch (score, then learn):

1. ``observe`` every event: windows updated, features read against the baseline;
2. rules, then streaming detectors score the whole batch (vectorized) and learn only from rows
   nothing fired on;
3. triage turns firings into findings;
4. events that raised nothing are folded into their identity's baseline;
5. findings and dead letters are written.

No business logic lives here; it wires the parts together and counts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import orjson

from models.registry import build_detectors
from models.rules import RuleSet, load_rules
from pipeline.config import Settings
from pipeline.events import AccessEvent, DeadLetter
from pipeline.features import FeatureExtractor
from pipeline.findings import Finding, to_ocsf
from pipeline.segments import SegmentTable
from pipeline.store import Store
from pipeline.triage import StreamingDetectorInfo, Triage

log = logging.getLogger(__name__)
_LOGGED_DEAD_LETTERS = 20  # a file of garbage must not flood the log


@dataclass
class RunStats:
    events: int = 0
    dead_letters: int = 0
    findings: int = 0
    truncated_fields: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class Pipeline:
    """Everything between an event and a stored finding, for one stream of events."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 alerts_out: TextIO | None = None,
                 on_finding: Callable[[Finding], None] | None = None) -> None:
        self.settings = settings
        self.segments = SegmentTable((s.name, s.cidr) for s in settings.segments)
        self.extractor = FeatureExtractor(self.segments)
        self.rules = RuleSet(load_rules(settings.rules_dir()))
        self.detectors = build_detectors(settings.detectors)
        self.triage = Triage(
            self.extractor, settings.triage.suppress_minutes, settings.triage.max_related_events,
            [StreamingDetectorInfo(d.name, d.threshold, d.high_threshold) for d in self.detectors],
        )
        self.store = store
        self.alerts_out = alerts_out
        self.on_finding = on_finding
        self.stats = RunStats()

    def process_batch(self, events: list[AccessEvent]) -> list[Finding]:
        batch = [self.extractor.observe(e) for e in events]
        rule_hits = self.rules.evaluate(batch)
        exclude = np.fromiter((bool(h) for h in rule_hits), dtype=bool, count=len(batch))
        values = np.array([fv.values for fv in batch], dtype=np.float64)
        scores = []
        for detector in self.detectors:
            sb = detector.score_then_learn(batch, exclude, values)
            exclude = exclude | sb.fired
            scores.append(sb)
        findings, flagged = self.triage.decide(batch, rule_hits, scores)
        learn = self.extractor.learn
        for fv, raised in zip(batch, flagged.tolist()):
            if not raised:
                learn(fv)
            if fv.event.truncated:
                self.stats.truncated_fields += len(fv.event.truncated)
        self.stats.events += len(events)
        self._emit(findings)
        return findings

    def _emit(self, findings: list[Finding]) -> None:
        if not findings:
            return
        self.stats.findings += len(findings)
        if self.store is not None:
            self.store.add_findings(findings)
        if self.alerts_out is not None:
            for f in findings:
                self.alerts_out.write(orjson.dumps(to_ocsf(f)).decode() + "\n")
        if self.on_finding is not None:
            for f in findings:
                self.on_finding(f)

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

    def run(self, items: Iterable[AccessEvent | DeadLetter],
            progress: Callable[[RunStats], None] | None = None) -> RunStats:
        """Consume a stream of events and dead letters to its end."""
        size = self.settings.runner.batch_size
        interval = self.settings.runner.progress_seconds
        started = last_report = time.perf_counter()
        events: list[AccessEvent] = []
        letters: list[DeadLetter] = []
        for item in items:
            if type(item) is AccessEvent:
                events.append(item)
                if len(events) >= size:
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
            else:
                letters.append(item)
        if events:
            self.process_batch(events)
        if letters:
            self.dead_letter(letters)
        self.stats.seconds = time.perf_counter() - started
        return self.stats


def stderr_progress(counters) -> Callable[[RunStats], None]:
    """Progress lines for long replays: how far through the input, rate, findings so far."""

    def report(stats: RunStats) -> None:
        fraction = counters.fraction_done() if counters is not None else None
        done = f" ({100 * fraction:.0f}% of input)" if fraction is not None else ""
        print(f"secretscope: {stats.events:,} calls{done}, {stats.events_per_second:,.0f} calls/s, "
              f"{stats.findings:,} findings, {stats.dead_letters:,} dead letters",
              file=sys.stderr, flush=True)

    return report
