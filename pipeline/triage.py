"""Scores -> findings: suppression, incidents, explanations, calibrated severity, ATT&CK.

For each event on which a detector fired:

1. firings an allowlist entry or a change window (deploy, rotation) expects are dropped;
2. the rest are explained and combined into one candidate finding (``models.ensemble``: one
   calibrated score, the severity read off it, a rule's own severity as a floor);
3. a candidate below ``min_severity``, or whose leading reason was labelled false positive for
   this identity, is dropped;
4. one finding per identity per incident: if the identity has an open incident (its last firing
   less than ``incident_minutes`` of event time ago) and the candidate is not more severe, it is
   merged into the incident's finding (related events, reasons, detectors) and the finding is
   reported as updated; otherwise the candidate opens a new incident and is emitted.

Events of every firing, emitted, merged or dropped, stay out of the baseline (the runner sees
to that): an expected burst is not evidence of normal behaviour either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

import numpy as np

from models.base import ScoreBatch
from models.ensemble import combine, detector_score, rule_score, severity_of
from models.rules import SEVERITIES, Rule
from pipeline.config import TriageSettings
from pipeline.events import AccessEvent
from pipeline.explain import factors, peer_comparison, rule_reason, streaming_reasons
from pipeline.features import FeatureExtractor, FeatureVector, IdentityState
from pipeline.findings import Finding, Reason, finding_id
from pipeline.suppression import (ALLOWLIST, BELOW_MIN_SEVERITY, CHANGE_WINDOW, FALSE_POSITIVE,
                                  INCIDENT, Suppressions)

_MAX_REASONS = 12
# (detector name, feature vector, identity state, row index in the scored batch) -> reasons
Explainer = Callable[[str, FeatureVector, IdentityState | None, int], list[Reason]]


@dataclass(frozen=True)
class StreamingDetectorInfo:
    name: str
    threshold: float
    high_threshold: float
    techniques: tuple[str, ...] = ("T1555", "T1078")
    explain: Explainer | None = None  # detector-specific reasons; default: streaming_reasons
    at_threshold: float = 0.5  # calibrated score of a firing at threshold (models.ensemble)


class _Incident:
    __slots__ = ("finding", "finding_id", "severity", "last_ts", "triggers")

    def __init__(self, finding: Finding | None, finding_id: str, severity: int,
                 last_ts: float) -> None:
        self.finding = finding
        self.finding_id = finding_id
        self.severity = severity
        self.last_ts = last_ts
        self.triggers: list[str] = [finding.trigger.event_id] if finding is not None else []


class Triage:
    def __init__(self, extractor: FeatureExtractor, settings: TriageSettings | None = None,
                 streaming: Sequence[StreamingDetectorInfo] = (),
                 suppressions: Suppressions | None = None) -> None:
        settings = settings or TriageSettings()
        self.extractor = extractor
        self.incident_seconds = settings.incident_minutes * 60.0
        self.false_positive_seconds = settings.false_positive_days * 86400.0
        self.max_related = settings.max_related_events
        self.min_severity = SEVERITIES[settings.min_severity]
        self.streaming = {d.name: d for d in streaming}
        self.suppressions = suppressions or Suppressions()
        self.incidents: dict[str, _Incident] = {}
        self.quieted = dict.fromkeys((ALLOWLIST, CHANGE_WINDOW, BELOW_MIN_SEVERITY, FALSE_POSITIVE,
                                      INCIDENT), 0)
        self._updated: dict[str, Finding] = {}

    @property
    def suppressed(self) -> int:
        return sum(self.quieted.values())

    def decide(self, batch: Sequence[FeatureVector], rule_hits: Sequence[tuple[Rule, ...]],
               scores: Sequence[ScoreBatch],
               as_of: Callable[[int], AbstractContextManager] | None = None) -> list[Finding]:
        """New findings for the rows of a batch on which something fired, in row order; merges
        into open incidents are collected for :meth:`take_updates`.

        ``as_of(i)``, if given, is entered while row ``i`` is explained, so the explanation sees
        the identity's baseline as it was when that row was scored.
        """
        fired_any = np.fromiter((bool(h) for h in rule_hits), dtype=bool, count=len(batch))
        for sb in scores:
            fired_any |= sb.fired
        findings = []
        for i in np.flatnonzero(fired_any).tolist():
            fv = batch[i]
            rules = [r for r in rule_hits[i] if self._expected(fv, r.id)]
            streaming = [(sb.detector, float(sb.scores[i])) for sb in scores
                         if sb.fired[i] and self._expected(fv, sb.detector)]
            if not (rules or streaming):
                continue
            if as_of is None:
                candidate = self._candidate(fv, rules, streaming, i)
            else:
                with as_of(i):
                    candidate = self._candidate(fv, rules, streaming, i)
            if candidate.severity_id < self.min_severity:
                self.quieted[BELOW_MIN_SEVERITY] += 1
                continue
            if self._labelled_false(candidate):
                continue
            opened = self._incident(candidate)
            if opened is not None:
                findings.append(opened)
        return findings

    def take_updates(self) -> list[Finding]:
        """Findings that grew by merges since the last call (their newest version each)."""
        updated, self._updated = list(self._updated.values()), {}
        return updated

    def _expected(self, fv: FeatureVector, detector: str) -> bool:
        """False (and counted) if an allowlist entry or change window expects this firing."""
        why = self.suppressions.why_quiet(fv.event, detector, fv.segment)
        if why is None:
            return True
        self.quieted[why] += 1
        return False

    def _labelled_false(self, candidate: Finding) -> bool:
        if self.suppressions.labelled_false(candidate.trigger, candidate.reasons[0].code):
            self.quieted[FALSE_POSITIVE] += 1
            return True
        return False

    def _incident(self, candidate: Finding) -> Finding | None:
        """Open a new incident with ``candidate`` (returned) or merge it into the open one."""
        ts = candidate.trigger.ts
        open_ = self.incidents.get(candidate.identity)
        if (open_ is not None and 0.0 <= ts - open_.last_ts < self.incident_seconds
                and candidate.severity_id <= open_.severity):
            open_.last_ts = ts
            self.quieted[INCIDENT] += 1
            if open_.finding is not None:
                open_.finding = self._merge(open_, candidate)
                self._updated[open_.finding_id] = open_.finding
            return None
        self.incidents[candidate.identity] = _Incident(candidate, candidate.id,
                                                       candidate.severity_id, ts)
        return candidate

    def _merge(self, incident: _Incident, candidate: Finding) -> Finding:
        f = incident.finding
        assert f is not None
        incident.triggers.append(candidate.trigger.event_id)
        triggers = set(incident.triggers)
        related = list(dict.fromkeys(f.related_event_ids + candidate.related_event_ids))
        if len(related) > self.max_related:
            # keep every firing's trigger, then the newest of the rest
            others = [r for r in related if r not in triggers]
            keep = set(others[len(others) - max(0, self.max_related - len(triggers)):])
            related = [r for r in related if r in triggers or r in keep]
        reasons = {(r.code, r.detector): r for r in f.reasons + candidate.reasons}
        return replace(
            f, detectors=tuple(dict.fromkeys(f.detectors + candidate.detectors)),
            reasons=tuple(reasons.values())[:_MAX_REASONS],
            techniques=tuple(dict.fromkeys(f.techniques + candidate.techniques)),
            related_event_ids=tuple(related[-self.max_related:]),
            score=max(f.score, candidate.score), last_time=candidate.time,
            merged=f.merged + 1, learning=f.learning or candidate.learning,
            factors=tuple(dict.fromkeys(f.factors + candidate.factors)),
        )

    def _candidate(self, fv: FeatureVector, rules: list[Rule],
                   streaming: list[tuple[str, float]], row: int) -> Finding:
        event = fv.event
        state = self.extractor.state(event.identity)
        detectors = tuple(r.id for r in rules) + tuple(name for name, _ in streaming)
        reasons: list[Reason] = []
        techniques: list[str] = []
        calibrated: list[float] = []
        floor = 1
        related: list[str] = []
        for rule in rules:
            reasons.append(rule_reason(rule, fv, state))
            techniques.extend(rule.attack)
            calibrated.append(rule_score(rule.severity_id))
            floor = max(floor, rule.severity_id)
            related.extend(_related(rule.related, state, self.max_related, event))
        for name, value in streaming:
            info = self.streaming[name]
            explain = info.explain or _default_explainer
            reasons.extend(explain(name, fv, state, row))
            techniques.extend(info.techniques)
            calibrated.append(detector_score(value, info.threshold, info.high_threshold,
                                             info.at_threshold))
            related.extend(_related("recent_1h", state, self.max_related, event))
        related.append(event.event_id)
        related_ids = tuple(dict.fromkeys(related))[-self.max_related:]
        if event.event_id not in related_ids:
            related_ids = related_ids[1:] + (event.event_id,)
        score = combine(calibrated)
        title = rules[0].title if rules else _learned_title(fv, state)
        if len(detectors) > 1:
            title += f" (+{len(detectors) - 1} more)"
        unique = {(r.code, r.detector): r for r in reasons}
        return Finding(
            id=finding_id(detectors, event.identity, event.event_id),
            time=event.time, identity=event.identity, display_name=event.display_name,
            title=title, severity_id=max(floor, severity_of(score)), score=score,
            detectors=detectors, reasons=tuple(unique.values())[:_MAX_REASONS],
            techniques=tuple(dict.fromkeys(techniques)), related_event_ids=related_ids,
            trigger=event, segment=fv.segment, factors=factors(fv),
            peers=peer_comparison(state), learning=bool(streaming),
        )

    def to_state(self) -> list:
        """Open incidents (without their findings) and counters, for snapshots. After a restore
        further firings of such an incident are still merged, but no longer reported as updates."""
        return [[identity, inc.finding_id, inc.severity, inc.last_ts]
                for identity, inc in self.incidents.items()]

    def load_state(self, state: list) -> None:
        self.incidents = {identity: _Incident(None, fid, severity, last_ts)
                          for identity, fid, severity, last_ts in state}


def _default_explainer(name: str, fv: FeatureVector, state: IdentityState | None,
                       row: int) -> list[Reason]:
    return streaming_reasons(name, fv, state)


def _learned_title(fv: FeatureVector, state: IdentityState | None) -> str:
    if state is not None and not state.history:
        return "New identity acting unlike its peers"
    return "Unusual secret access for this identity"


def _related(kind: str, state: IdentityState | None, limit: int, trigger: AccessEvent) -> list[str]:
    """Ids of the identity's recent events of ``kind`` up to and including the trigger.

    Windows of a whole batch are recorded before it is scored, so entries after the trigger are
    cut off here; entries the window has since dropped (older than its horizon relative to later
    events of the batch) are not recovered.
    """
    if state is None or kind == "trigger":
        return []
    if kind == "denied_5m":
        items, horizon = list(state.denied_5m.items), state.denied_5m.horizon
    elif kind == "login_failed_5m":
        items, horizon = list(state.login_failed_5m.items), state.login_failed_5m.horizon
    else:
        items, horizon = list(state.recent), 3600.0
    end = len(items)
    for pos in range(len(items) - 1, -1, -1):
        if items[pos][1] == trigger.event_id:
            end = pos + 1
            break
    floor = trigger.ts - horizon
    return [eid for ts, eid in items[:end][-limit:] if floor < ts <= trigger.ts]

