"""Labelled-scenario metrics: recall per attack class, precision, false findings per 10k benign
events, detection delay.

A finding is a true positive when any event it names (``related_event_ids``) belongs to a
labelled attack episode; an episode is detected when at least one finding names one of its
events, and its delay is the time from the episode's first event to that finding's trigger.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from pipeline.findings import Finding


@dataclass(frozen=True)
class Episode:
    episode: str
    attack_class: str
    start: datetime
    end: datetime
    request_ids: frozenset[str]


@dataclass(frozen=True)
class ClassResult:
    attack_class: str
    episodes: int
    detected: int
    median_delay_seconds: float | None

    @property
    def recall(self) -> float:
        return self.detected / self.episodes if self.episodes else 0.0


@dataclass(frozen=True)
class EvaluationReport:
    classes: tuple[ClassResult, ...]
    findings: int
    true_findings: int
    benign_events: int
    attack_events: int

    @property
    def recall(self) -> float:
        total = sum(c.episodes for c in self.classes)
        return sum(c.detected for c in self.classes) / total if total else 0.0

    @property
    def precision(self) -> float:
        return self.true_findings / self.findings if self.findings else 0.0

    @property
    def false_findings(self) -> int:
        return self.findings - self.true_findings

    @property
    def false_per_10k_benign(self) -> float:
        return 10_000 * self.false_findings / self.benign_events if self.benign_events else 0.0


def load_episodes(path: str | Path) -> list[Episode]:
    episodes = []
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            d = orjson.loads(line)
            episodes.append(Episode(
                episode=d["episode"], attack_class=d["class"],
                start=datetime.fromisoformat(d["start"]), end=datetime.fromisoformat(d["end"]),
                request_ids=frozenset(d["request_ids"]),
            ))
    return episodes


def evaluate(findings: Iterable[Finding], episodes: Sequence[Episode],
             total_events: int) -> EvaluationReport:
    owner = {rid: ep for ep in episodes for rid in ep.request_ids}
    first_detection: dict[str, datetime] = {}
    n_findings = n_true = 0
    for f in findings:
        n_findings += 1
        hit = {owner[r].episode for r in f.related_event_ids if r in owner}
        if hit:
            n_true += 1
        for name in hit:
            if name not in first_detection or f.time < first_detection[name]:
                first_detection[name] = f.time
    by_class: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_class[ep.attack_class].append(ep)
    results = []
    for cls in sorted(by_class):
        eps = by_class[cls]
        delays = sorted(max(0.0, (first_detection[e.episode] - e.start).total_seconds())
                        for e in eps if e.episode in first_detection)
        results.append(ClassResult(cls, len(eps), len(delays),
                                   delays[len(delays) // 2] if delays else None))
    attack_events = len(owner)
    return EvaluationReport(tuple(results), n_findings, n_true,
                            max(0, total_events - attack_events), attack_events)
