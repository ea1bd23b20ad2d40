"""Labelled-scenario metrics: recall per attack class, precision, false findings per 10k benign
events, detection delay.

A finding is a true positive when any event it names (``related_event_ids``) belongs to a
labelled attack episode; an episode is detected when at least one finding names one of its
events, and its delay is the time from the episode's first event to that finding's trigger.
An episode should be one finding that grows: how many distinct findings name each episode is
counted too (``max_findings_per_episode``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from secretscope.errors import UsageError
from secretscope.findings import Finding


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
    max_findings: int = 0  # most distinct findings naming one episode of the class

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
    delays: tuple[float, ...] = ()  # seconds to detection of every detected episode

    @property
    def median_delay_seconds(self) -> float | None:
        d = sorted(self.delays)
        return d[len(d) // 2] if d else None

    @property
    def recall(self) -> float:
        total = sum(c.episodes for c in self.classes)
        return sum(c.detected for c in self.classes) / total if total else 0.0

    @property
    def max_findings_per_episode(self) -> int:
        return max((c.max_findings for c in self.classes), default=0)

    @property
    def min_class_recall(self) -> float:
        return min((c.recall for c in self.classes), default=0.0)

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
    """The labels ``secretscope simulate`` wrote; a line that is not one is a UsageError
    naming the file and line."""
    episodes = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                episodes.append(_episode(orjson.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                why = f"no field {exc}" if isinstance(exc, KeyError) else str(exc)
                raise UsageError(f"{path}:{lineno}: not a label line of `secretscope simulate` "
                                 f"({why})") from None
    return episodes


def _episode(d: dict) -> Episode:
    return Episode(episode=d["episode"], attack_class=d["class"],
                   start=datetime.fromisoformat(d["start"]),
                   end=datetime.fromisoformat(d["end"]), request_ids=frozenset(d["request_ids"]))


def evaluate(findings: Iterable[Finding], episodes: Sequence[Episode],
             total_events: int) -> EvaluationReport:
    """``findings`` may hold several versions of one finding (an incident that grew by merged
    firings, same id): a finding counts once, as true if any version names an attack event, and
    an episode is detected at the earliest version naming one of its events (a merge's time is
    the merged firing's, ``last_time``)."""
    owner = {rid: ep for ep in episodes for rid in ep.request_ids}
    first_detection: dict[str, datetime] = {}
    naming: dict[str, set[str]] = defaultdict(set)  # episode -> ids of findings naming it
    true_ids: set[str] = set()
    all_ids: set[str] = set()
    for f in findings:
        all_ids.add(f.id)
        hit = {owner[r].episode for r in f.related_event_ids if r in owner}
        if hit:
            true_ids.add(f.id)
            for name in hit:
                naming[name].add(f.id)
        at = f.last_time or f.time
        for name in hit:
            if name not in first_detection or at < first_detection[name]:
                first_detection[name] = at
    n_findings, n_true = len(all_ids), len(true_ids)
    by_class: dict[str, list[Episode]] = defaultdict(list)
    for ep in episodes:
        by_class[ep.attack_class].append(ep)
    results = []
    all_delays: list[float] = []
    for cls in sorted(by_class):
        eps = by_class[cls]
        delays = sorted(max(0.0, (first_detection[e.episode] - e.start).total_seconds())
                        for e in eps if e.episode in first_detection)
        all_delays += delays
        results.append(ClassResult(cls, len(eps), len(delays),
                                   delays[len(delays) // 2] if delays else None,
                                   max((len(naming[e.episode]) for e in eps), default=0)))
    attack_events = len(owner)
    return EvaluationReport(tuple(results), n_findings, n_true,
                            max(0, total_events - attack_events), attack_events,
                            tuple(all_delays))


def evaluate_log(log: Path, settings, labels: Path | None = None, windows: Path | None = None,
                 progress=None, use_windows: bool = True, workers: int = 1) -> EvaluationReport:
    """Replay a simulated log through the pipeline of ``settings`` and score it against its
    labels (default ``LOG.labels.jsonl``). A change-window feed (default ``LOG.windows.jsonl``
    if it exists) is given to triage, as a deploy system would, unless ``use_windows`` is off.
    ``workers`` as for ``secretscope replay`` (the figures are the same)."""
    from secretscope.replay_split import replay_source
    from secretscope.runner import Pipeline
    from secretscope.store import Store

    stem = log.name.removesuffix(".gz")
    labels = labels or log.with_name(stem + ".labels.jsonl")
    windows = windows or log.with_name(stem + ".windows.jsonl")
    if use_windows and windows.is_file():
        settings = settings.model_copy(update={"triage": settings.triage.model_copy(
            update={"change_window_feed": str(windows.resolve())})})
    collected: list[Finding] = []
    with replay_source([str(log)], settings, workers) as (_, attach):
        store = Store(settings.store.url)
        try:
            pipeline = Pipeline(settings, store=store, on_version=collected.append)
            stats = pipeline.run(attach(pipeline), progress)
        finally:
            store.close()
    return evaluate(collected, load_episodes(labels), stats.events)
