"""Scores -> findings: suppression, incidents, explanations, calibrated severity, ATT&CK.

For each event on which a detector fired:

1. firings an allowlist entry or a change window (deploy, rotation) expects are dropped;
2. the rest are explained and combined into one candidate finding (``models.ensemble``: one
   calibrated score, the severity read off it, a rule's own severity as a floor);
3. a candidate below ``min_severity``, or whose leading reason was labelled false positive for
   this identity, is dropped;
4. one finding per identity per incident, with versions: a candidate opens an incident (its
   finding's **Create**) unless the identity has one whose last firing is less than
   ``incident_minutes`` of event time ago; then it is merged in (related events, reasons,
   detectors, severity, last seen) and an **Update** follows: at once when the severity rises,
   otherwise at most one per ``update_minutes`` of event time. After ``incident_minutes`` of
   quiet the finding is **Closed**. All of it is decided in event time, so the same input gives
   the same versions however it was batched;
5. a slow campaign (one firing an hour for days) is one finding that grows, not one per firing:
   a candidate of an identity with no open incident **reopens** the identity's last finding if
   the pipeline closed it (after quiet, not an analyst) less than ``campaign_hours`` of event
   time ago and the candidate shares a reason code or a detector with it. The candidate is
   merged in and an Update with status New follows at once; the finding closes again after
   quiet like any incident.

Events of every firing, emitted, merged or dropped, stay out of the baseline (the runner sees
to that): an expected burst is not evidence of normal behaviour either.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from operator import attrgetter

import msgspec
import numpy as np

from secretscope.models.base import ScoreBatch
from secretscope.models.ensemble import combine, detector_score, rule_score, severity_of
from secretscope.models.rules import SEVERITIES, Rule
from secretscope.config import TriageSettings
from secretscope.events import AccessEvent
from secretscope.explain import factors, peer_comparison, rule_reason, streaming_reasons
from secretscope.features import FeatureExtractor, FeatureVector, IdentityState
from secretscope.identity import BURST_HORIZON
from secretscope.findings import (CLOSE, NEW, RESOLVED, UPDATE, Finding, Reason, finding_id,
                               titled)
from secretscope.suppression import (ALLOWLIST, BELOW_MIN_SEVERITY, CHANGE_WINDOW, FALSE_POSITIVE,
                                  INCIDENT, Suppressions)

_MAX_REASONS = 12
_TS = attrgetter("event.ts")
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
    """The open finding of one identity: its current content and when its versions are due.

    ``finding`` is the newest content; ``finding.version`` the last version emitted. Merges that
    are not emitted at once leave ``pending`` set until ``emitted_at + update_seconds`` of event
    time (or the close, which carries them). ``acknowledged``: an analyst took it on, so once
    closed it is never reopened."""

    __slots__ = ("finding", "last_ts", "emitted_at", "pending", "triggers", "acknowledged")

    def __init__(self, finding: Finding, last_ts: float, emitted_at: float,
                 pending: bool = False, triggers: list[str] | None = None,
                 acknowledged: bool = False) -> None:
        self.finding = finding
        self.last_ts = last_ts
        self.emitted_at = emitted_at
        self.pending = pending
        self.triggers = triggers if triggers is not None else [finding.trigger.event_id]
        self.acknowledged = acknowledged

    def due(self, incident_seconds: float, update_seconds: float) -> float:
        """Event time of its next scheduled version: a coalesced update, or the close."""
        close = self.last_ts + incident_seconds
        return min(close, self.emitted_at + update_seconds) if self.pending else close


_FINDING_ENCODER = msgspec.msgpack.Encoder()
_FINDING_DECODER = msgspec.msgpack.Decoder(Finding)


class Triage:
    """Firings -> finding versions, decided in event time (see the module docstring).

    :meth:`decide` returns every version it emits, in order: Creates, Updates (merges, at most
    one per ``update_minutes`` of event time unless the severity rises) and Closes (after
    ``incident_minutes`` of quiet). The clock is the newest event time seen; every row advances
    it, fired or not, so the versions are the same whatever the batching.
    """

    def __init__(self, extractor: FeatureExtractor, settings: TriageSettings | None = None,
                 streaming: Sequence[StreamingDetectorInfo] = (),
                 suppressions: Suppressions | None = None) -> None:
        settings = settings or TriageSettings()
        self.extractor = extractor
        self.incident_seconds = settings.incident_minutes * 60.0
        self.campaign_seconds = settings.campaign_hours * 3600.0
        self.update_seconds = settings.update_minutes * 60.0
        self.false_positive_seconds = settings.false_positive_days * 86400.0
        self.max_related = settings.max_related_events
        self.min_severity = SEVERITIES[settings.min_severity]
        self.streaming = {d.name: d for d in streaming}
        self.suppressions = suppressions or Suppressions()
        self.incidents: dict[str, _Incident] = {}  # identity -> its open finding
        self.clock = float("-inf")
        self._due: list[tuple[float, str, str]] = []  # (due, finding id, identity), lazily pruned
        # identity -> its last finding, closed after quiet less than campaign_hours ago (its
        # emitted_at is the close): the finding a resumed campaign reopens
        self.closed: dict[str, _Incident] = {}
        self._expiry: list[tuple[float, str, str]] = []  # (closed at, finding id, identity)
        self.quieted = dict.fromkeys((ALLOWLIST, CHANGE_WINDOW, BELOW_MIN_SEVERITY, FALSE_POSITIVE,
                                      INCIDENT), 0)

    @property
    def suppressed(self) -> int:
        return sum(self.quieted.values())

    def decide(self, batch: Sequence[FeatureVector], rule_hits: Sequence[tuple[Rule, ...]],
               scores: Sequence[ScoreBatch],
               as_of: Callable[[int], AbstractContextManager] | None = None,
               related: Callable[[int, str], list[str]] | None = None,
               ruled: np.ndarray | None = None) -> list[Finding]:
        """The finding versions the rows of a batch produce, in order.

        ``as_of(i)``, if given, is entered while row ``i`` is explained, so the explanation sees
        the identity's baseline as it was when that row was scored; ``related(i, kind)`` gives
        the ids of row ``i``'s recent events of ``kind`` as they were at that row. ``ruled``:
        the rows with rule hits, if the caller has them as an array already.
        """
        if ruled is None:
            ruled = np.fromiter((bool(h) for h in rule_hits), dtype=bool, count=len(batch))
        fired_any = ruled.copy()
        for sb in scores:
            fired_any |= sb.fired
        out: list[Finding] = []
        done = 0
        clock = self.clock
        for i in np.flatnonzero(fired_any).tolist():
            clock = max(clock, *map(_TS, batch[done:i + 1]))  # rows in between move it too
            done = i + 1
            self.advance(clock, out)
            fv = batch[i]
            rules = [r for r in rule_hits[i] if self._expected(fv, r.id)]
            streaming = [(sb.detector, float(sb.scores[i])) for sb in scores
                         if sb.fired[i] and self._expected(fv, sb.detector)]
            if not (rules or streaming):
                continue
            if not streaming and _rules_severity(rules) < self.min_severity:
                # what the candidate's severity would be: no need to explain (and rewind the
                # baseline for) a firing that is only counted
                self.quieted[BELOW_MIN_SEVERITY] += 1
                continue
            if as_of is None:
                candidate = self._candidate(fv, rules, streaming, i, related)
            else:
                with as_of(i):
                    candidate = self._candidate(fv, rules, streaming, i, related)
            if candidate.severity_id < self.min_severity:
                self.quieted[BELOW_MIN_SEVERITY] += 1
                continue
            if self._labelled_false(candidate):
                continue
            self._incident(candidate, out)
        if done < len(batch):
            clock = max(clock, *map(_TS, batch[done:]))
        self.advance(clock, out)
        return out

    def advance(self, clock: float, out: list[Finding]) -> None:
        """Move event time to ``clock``: emit the coalesced updates and closes now due, oldest
        due first (ties by finding id), each at its due time."""
        if clock > self.clock:
            self.clock = clock
        due = self._due
        while due and due[0][0] <= self.clock:
            at, fid, identity = heapq.heappop(due)
            inc = self.incidents.get(identity)
            if inc is None or inc.finding.id != fid:
                continue  # closed already, or a newer incident of the identity
            if inc.due(self.incident_seconds, self.update_seconds) != at:
                continue  # rescheduled by a later merge
            if at >= inc.last_ts + self.incident_seconds:
                del self.incidents[identity]
                out.append(self._version(inc, CLOSE, at))
                self._remember(identity, inc)
            else:
                out.append(self._version(inc, UPDATE, at))
                self._schedule(identity, inc)
        self._forget_stale()

    def finish(self) -> list[Finding]:
        """End of input: the merges still waiting for their update are emitted now (the
        incidents stay open: a later run over more input may still grow or close them)."""
        out = []
        for identity, inc in sorted(self.incidents.items(), key=lambda kv: kv[1].finding.id):
            if inc.pending:
                out.append(self._version(inc, UPDATE, max(self.clock, inc.emitted_at)))
                self._schedule(identity, inc)
        return out

    def closed_by_analyst(self, finding_ids: set[str]) -> None:
        """Findings an analyst closed: later firings of their identities open new findings."""
        for held in (self.incidents, self.closed):
            for identity in [k for k, inc in held.items() if inc.finding.id in finding_ids]:
                del held[identity]

    def acknowledged_by_analyst(self, finding_ids: set[str]) -> None:
        """Findings an analyst acknowledged: open ones still grow, but none is reopened."""
        for inc in self.incidents.values():
            if inc.finding.id in finding_ids:
                inc.acknowledged = True
        for identity in [k for k, inc in self.closed.items() if inc.finding.id in finding_ids]:
            del self.closed[identity]

    def open_findings(self) -> list[str]:
        return [inc.finding.id for inc in self.incidents.values()]

    def reopenable_findings(self) -> list[str]:
        """Findings closed after quiet that a resumed campaign would reopen."""
        return [inc.finding.id for inc in self.closed.values()]

    def _remember(self, identity: str, inc: _Incident) -> None:
        if self.campaign_seconds > 0 and not inc.acknowledged:
            self.closed[identity] = inc
            heapq.heappush(self._expiry, (inc.emitted_at, inc.finding.id, identity))

    def _forget_stale(self) -> None:
        """Drop closed findings the clock has left ``campaign_hours`` behind: the memory is
        bounded by the identities closed within one campaign window."""
        expiry, horizon = self._expiry, self.clock - self.campaign_seconds
        while expiry and expiry[0][0] <= horizon:
            at, fid, identity = heapq.heappop(expiry)
            inc = self.closed.get(identity)
            if inc is not None and inc.finding.id == fid and inc.emitted_at == at:
                del self.closed[identity]

    def _schedule(self, identity: str, inc: _Incident) -> None:
        heapq.heappush(self._due, (inc.due(self.incident_seconds, self.update_seconds),
                                   inc.finding.id, identity))

    def _version(self, inc: _Incident, activity: int, at: float,
                 raised: bool = False, note: str = "") -> Finding:
        """Emit the incident's current content as its next version."""
        f = inc.finding
        inc.finding = replace(
            f, version=f.version + 1, activity_id=activity,
            status_id=RESOLVED if activity == CLOSE else f.status_id,
            raised=raised, closed_time=_utc(at) if activity == CLOSE else None, status_note=note)
        inc.emitted_at = at
        inc.pending = False
        return inc.finding

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

    def _incident(self, candidate: Finding, out: list[Finding]) -> None:
        """Open a new incident with ``candidate`` (its Create) or merge it into the open one
        (an Update now if the severity rose or the last version is ``update_minutes`` old)."""
        ts = candidate.trigger.ts
        identity = candidate.identity
        inc = self.incidents.get(identity)
        if inc is not None and 0.0 <= ts - inc.last_ts < self.incident_seconds:
            self.quieted[INCIDENT] += 1
            raised = candidate.severity_id > inc.finding.severity_id
            inc.finding = self._merge(inc, candidate)
            inc.last_ts = max(inc.last_ts, ts)
            if raised or self.clock - inc.emitted_at >= self.update_seconds:
                out.append(self._version(inc, UPDATE, self.clock, raised))
            else:
                inc.pending = True
            self._schedule(identity, inc)
            return
        if inc is None and self._reopen(candidate, out):
            return
        self.closed.pop(identity, None)  # its last finding is this one now
        inc = self.incidents[identity] = _Incident(candidate, ts, self.clock)
        out.append(candidate)
        self._schedule(identity, inc)

    def _reopen(self, candidate: Finding, out: list[Finding]) -> bool:
        """Merge ``candidate`` into its identity's finding closed after quiet, if the same
        activity resumed within ``campaign_hours`` of the close: an Update with status New."""
        ts = candidate.trigger.ts
        identity = candidate.identity
        inc = self.closed.get(identity)  # closed less than campaign_hours before the clock
        if inc is None or ts < inc.last_ts or not _same_activity(inc.finding, candidate):
            return False
        del self.closed[identity]
        self.quieted[INCIDENT] += 1
        raised = candidate.severity_id > inc.finding.severity_id
        quiet_minutes = round((ts - inc.last_ts) / 60.0)
        inc.finding = replace(self._merge(inc, candidate), status_id=NEW)
        inc.last_ts = ts
        self.incidents[identity] = inc
        out.append(self._version(
            inc, UPDATE, self.clock, raised,
            note=f"reopened: the same activity resumed after {quiet_minutes} minutes of quiet"))
        self._schedule(identity, inc)
        return True

    def _merge(self, incident: _Incident, candidate: Finding) -> Finding:
        f = incident.finding
        incident.triggers.append(candidate.trigger.event_id)
        triggers = set(incident.triggers)
        related = list(dict.fromkeys(f.related_event_ids + candidate.related_event_ids))
        if len(related) > self.max_related:
            # keep the first trigger, then the newest triggers, then the newest of the rest
            first = incident.triggers[0]
            newest = set(incident.triggers[-(self.max_related - 1):]) - {first}
            room = self.max_related - 1 - len(newest)
            others = [r for r in related if r not in triggers]
            keep = set(others[len(others) - room:]) if room > 0 else set()
            related = [r for r in related if r == first or r in newest or r in keep]
        reasons = _strongest_first(f.reasons + candidate.reasons)
        stronger = candidate.reasons[0].weight > f.reasons[0].weight
        headline = candidate.headline if stronger else f.headline
        detectors = tuple(dict.fromkeys(f.detectors + candidate.detectors))
        return replace(
            f, detectors=detectors, reasons=reasons, title=titled(headline, detectors),
            headline=headline, severity_id=max(f.severity_id, candidate.severity_id),
            techniques=tuple(dict.fromkeys(f.techniques + candidate.techniques)),
            related_event_ids=tuple(related),
            score=max(f.score, candidate.score), last_time=candidate.time,
            merged=f.merged + 1, learning=f.learning or candidate.learning,
            learned=tuple(dict.fromkeys(f.learned + candidate.learned)),
            factors=tuple(dict.fromkeys(f.factors + candidate.factors)),
        )

    def _candidate(self, fv: FeatureVector, rules: list[Rule],
                   streaming: list[tuple[str, float]], row: int,
                   related_of: Callable[[int, str], list[str]] | None = None) -> Finding:
        event = fv.event
        state = self.extractor.state(event.identity)

        def recent(kind: str) -> list[str]:
            if related_of is not None:
                return related_of(row, kind)[-self.max_related:]
            return _related(kind, state, self.max_related, event)

        # strongest first: the title and the leading reason come from the most severe firing
        rules = sorted(rules, key=lambda r: (-r.severity_id, r.id))
        detectors = tuple(r.id for r in rules) + tuple(name for name, _ in streaming)
        reasons: list[Reason] = []
        techniques: list[str] = []
        calibrated: list[float] = []
        floor = 1
        related: list[str] = []
        headline, strongest = "", -1.0
        for rule in rules:
            weight = rule_score(rule.severity_id)
            reasons.append(replace(rule_reason(rule, fv, state), weight=weight))
            techniques.extend(rule.attack)
            calibrated.append(weight)
            floor = max(floor, rule.severity_id)
            related.extend(recent(rule.related) if rule.related != "trigger" else [])
            if weight > strongest:
                headline, strongest = rule.title, weight
        for name, value in streaming:
            info = self.streaming[name]
            explain = info.explain or _default_explainer
            weight = detector_score(value, info.threshold, info.high_threshold, info.at_threshold)
            reasons.extend(replace(r, weight=weight) for r in explain(name, fv, state, row))
            techniques.extend(info.techniques)
            calibrated.append(weight)
            related.extend(recent("recent_1h"))
            if weight > strongest:
                headline, strongest = _learned_title(fv, state), weight
        related.append(event.event_id)
        related_ids = tuple(dict.fromkeys(related))[-self.max_related:]
        if event.event_id not in related_ids:
            related_ids = related_ids[1:] + (event.event_id,)
        score = combine(calibrated)
        return Finding(
            id=finding_id(detectors, event.identity, event.event_id),
            time=event.time, identity=event.identity, display_name=event.display_name,
            title=titled(headline, detectors), headline=headline,
            severity_id=max(floor, severity_of(score)), score=score,
            detectors=detectors, reasons=_strongest_first(reasons),
            techniques=tuple(dict.fromkeys(techniques)), related_event_ids=related_ids,
            trigger=event, segment=fv.segment, factors=factors(fv),
            peers=peer_comparison(state), learning=bool(streaming),
            learned=tuple(name for name, _ in streaming),
        )

    def to_state(self) -> list:
        """Open incidents and the findings a campaign may reopen, with their content, and the
        clock, for snapshots: a restored pipeline goes on growing, updating, closing and
        reopening them."""
        return [self.clock, _incidents_state(self.incidents), _incidents_state(self.closed)]

    def load_state(self, state: list) -> None:
        # snapshots written before campaigns hold no closed findings
        self.clock, incidents, closed = state if len(state) == 3 else (*state, [])
        self.incidents = _incidents_of(incidents)
        self._due = []
        for identity, inc in self.incidents.items():
            self._schedule(identity, inc)
        self.closed, self._expiry = {}, []
        for identity, inc in _incidents_of(closed).items():
            self._remember(identity, inc)
        self._forget_stale()


def _incidents_state(incidents: dict[str, _Incident]) -> list:
    return [[identity, _FINDING_ENCODER.encode(inc.finding), inc.last_ts, inc.emitted_at,
             inc.pending, inc.triggers, inc.acknowledged]
            for identity, inc in incidents.items()]


def _incidents_of(state: list) -> dict[str, _Incident]:
    # rows of snapshots written before campaigns have no acknowledged flag
    return {row[0]: _Incident(_FINDING_DECODER.decode(row[1]), row[2], row[3], row[4],
                              list(row[5]), bool(row[6]) if len(row) > 6 else False)
            for row in state}


def _same_activity(finding: Finding, candidate: Finding) -> bool:
    """The candidate continues the finding's activity: a reason code or a detector in common."""
    return (not {r.code for r in finding.reasons}.isdisjoint(r.code for r in candidate.reasons)
            or not set(finding.detectors).isdisjoint(candidate.detectors))


def _rules_severity(rules: Sequence[Rule]) -> int:
    """The severity of a candidate made of these rule firings alone (see ``_candidate``)."""
    return max(max(r.severity_id for r in rules),
               severity_of(combine(rule_score(r.severity_id) for r in rules)))


def _strongest_first(reasons: Sequence[Reason]) -> tuple[Reason, ...]:
    """Reasons by weight, strongest first (stable: a detector's own order among equals), one per
    code (its strongest)."""
    best: dict[str, Reason] = {}
    for r in sorted(reasons, key=lambda r: -r.weight):
        best.setdefault(r.code, r)
    return tuple(best.values())[:_MAX_REASONS]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


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
        items, horizon = state.win.denied_items(), BURST_HORIZON
    elif kind == "login_failed_5m":
        items, horizon = state.win.failed_items(), BURST_HORIZON
    else:
        items, horizon = list(state.recent), 3600.0
    end = len(items)
    for pos in range(len(items) - 1, -1, -1):
        if items[pos][1] == trigger.event_id:
            end = pos + 1
            break
    floor = trigger.ts - horizon
    return [eid for ts, eid in items[:end][-limit:] if floor < ts <= trigger.ts]

