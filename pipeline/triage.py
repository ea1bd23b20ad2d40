"""Scores -> findings: suppression, explanations, severity, ATT&CK.

One finding per event on which at least one detector fired and was not suppressed. A detector
that already raised a finding for an identity is quiet for that identity for
``suppress_minutes`` of event time, so a burst becomes one finding, not hundreds; suppressed
firings are still counted and their events still kept out of the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from models.base import ScoreBatch
from models.rules import Rule
from pipeline.events import AccessEvent
from pipeline.features import FeatureExtractor, FeatureVector, IdentityState
from pipeline.findings import Finding, Reason, finding_id

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class StreamingDetectorInfo:
    name: str
    threshold: float
    high_threshold: float
    techniques: tuple[str, ...] = ("T1555", "T1078")


class Triage:
    def __init__(self, extractor: FeatureExtractor, suppress_minutes: float = 60.0,
                 max_related: int = 25, streaming: Sequence[StreamingDetectorInfo] = ()) -> None:
        self.extractor = extractor
        self.suppress_seconds = suppress_minutes * 60.0
        self.max_related = max_related
        self.streaming = {d.name: d for d in streaming}
        self._last_raised: dict[tuple[str, str], float] = {}
        self.suppressed = 0

    def decide(self, batch: Sequence[FeatureVector], rule_hits: Sequence[tuple[Rule, ...]],
               scores: Sequence[ScoreBatch],
               as_of: Callable[[int], AbstractContextManager] | None = None) -> list[Finding]:
        """Findings for the rows of a batch on which something fired, in row order.

        ``as_of(i)``, if given, is entered while row ``i``'s finding is explained, so the
        explanation sees the identity's baseline as it was at that row.
        """
        fired_any = np.fromiter((bool(h) for h in rule_hits), dtype=bool, count=len(batch))
        for sb in scores:
            fired_any |= sb.fired
        findings = []
        for i in np.flatnonzero(fired_any).tolist():
            fv = batch[i]
            rules = [r for r in rule_hits[i] if self._open(fv, r.id)]
            streaming = [(sb.detector, float(sb.scores[i])) for sb in scores
                         if sb.fired[i] and self._open(fv, sb.detector)]
            if rules or streaming:
                if as_of is None:
                    findings.append(self._finding(fv, rules, streaming))
                else:
                    with as_of(i):
                        findings.append(self._finding(fv, rules, streaming))
        return findings

    def _open(self, fv: FeatureVector, detector: str) -> bool:
        """True if ``detector`` may raise for this identity now (and note that it does)."""
        key = (fv.event.identity, detector)
        last = self._last_raised.get(key)
        if last is not None and 0 <= fv.event.ts - last < self.suppress_seconds:
            self.suppressed += 1
            return False
        self._last_raised[key] = fv.event.ts
        return True

    def _finding(self, fv: FeatureVector, rules: list[Rule],
                 streaming: list[tuple[str, float]]) -> Finding:
        event = fv.event
        state = self.extractor.state(event.identity)
        detectors = tuple(r.id for r in rules) + tuple(name for name, _ in streaming)
        reasons: list[Reason] = []
        techniques: list[str] = []
        severity = 1
        score = 0.0
        related: list[str] = []
        for rule in rules:
            reasons.append(_rule_reason(rule, fv, state))
            techniques.extend(rule.attack)
            severity = max(severity, rule.severity_id)
            score = max(score, 1.0)
            related.extend(_related(rule.related, state, self.max_related, event))
        for name, value in streaming:
            info = self.streaming[name]
            reasons.extend(explain_streaming(name, fv, state))
            techniques.extend(info.techniques)
            severity = max(severity, 4 if value >= info.high_threshold else 3)
            score = max(score, value)
            related.extend(_related("recent_1h", state, self.max_related, event))
        related.append(event.event_id)
        related_ids = tuple(dict.fromkeys(related))[-self.max_related:]
        if event.event_id not in related_ids:
            related_ids = related_ids[1:] + (event.event_id,)
        title = rules[0].title if rules else "Unusual secret access for this identity"
        if len(detectors) > 1:
            title += f" (+{len(detectors) - 1} more)"
        return Finding(
            id=finding_id(detectors, event.identity, event.event_id),
            time=event.time, identity=event.identity, display_name=event.display_name,
            title=title, severity_id=severity, score=score, detectors=detectors,
            reasons=tuple(reasons), techniques=tuple(dict.fromkeys(techniques)),
            related_event_ids=related_ids, trigger=event, segment=fv.segment,
        )


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


def _baseline_of(feature: str, state: IdentityState | None) -> str:
    if state is None or not state.history:
        return "no history"
    if feature == "requests_count_1h":
        return f"usual {state.requests_baseline:.1f}/h"
    if feature in ("secrets_distinct_1h", "secrets_ratio_1h"):
        return f"usual {state.secrets_baseline:.1f} distinct secrets/h"
    if feature == "history_events":
        return "never did this before"
    return f"{state.history} events of history"


def _rule_reason(rule: Rule, fv: FeatureVector, state: IdentityState | None) -> Reason:
    observed = [f"{fv.event.operation} {fv.event.path}"]
    baseline = []
    for name in rule.explain:
        value = fv[name]
        observed.append(f"{name}={value:g}")
        baseline.append(_baseline_of(name, state))
    return Reason(code=rule.reason, detector=rule.id, text=rule.title,
                  observed=", ".join(observed),
                  baseline="; ".join(dict.fromkeys(baseline)) or _baseline_of("", state))


def _hour_label(ts: float) -> str:
    hour = int(ts // 3600)
    return f"{_DAYS[(hour // 24 + 3) % 7]} {hour % 24:02d}:00 UTC"


def explain_streaming(detector: str, fv: FeatureVector,
                      state: IdentityState | None) -> list[Reason]:
    """The unusual factors of an event for its identity, strongest first."""
    e = fv.event
    candidates: list[tuple[float, Reason]] = []
    if state is None or not state.history:
        return [Reason("NO_BASELINE", detector, "Identity has no baseline yet", "first events",
                       "none")]
    if fv["segment_first_seen"]:
        usual = ", ".join(f"{n} {s:.0%}" for n, s in state.usual_segments())
        candidates.append((1.0, Reason("SEGMENT_FIRST_SEEN", detector,
                                       "First access from this network segment",
                                       f"{fv.segment} ({e.remote_address})", usual or "none")))
    how_share = fv["hour_of_week_share"]
    if how_share * 56.0 < 0.25:
        hours = ", ".join(f"{h:02d}h" for h in sorted(state.usual_hours()))
        candidates.append((1.0 - how_share * 56.0, Reason(
            "HOUR_UNUSUAL", detector, "Active at an hour unusual for this identity",
            f"{_hour_label(e.ts)} ({how_share:.1%} of history in this hour +-1h)",
            f"usually {hours} UTC")))
    rate, rate_base = fv["requests_count_1h"], fv["requests_baseline_1h"]
    if rate > 3.0 * (rate_base + 1.0):
        candidates.append((min(1.0, rate / (10.0 * (rate_base + 1.0))), Reason(
            "RATE_ABOVE_BASELINE", detector, "Request rate far above this identity's usual",
            f"{rate:g} requests in 1h", f"usual {rate_base:.1f}/h")))
    breadth, breadth_base = fv["secrets_distinct_1h"], fv["secrets_baseline_1h"]
    if breadth > 3.0 * (breadth_base + 1.0):
        candidates.append((min(1.0, breadth / (10.0 * (breadth_base + 1.0))), Reason(
            "BREADTH_ABOVE_BASELINE", detector, "Many more distinct secrets than usual",
            f"{breadth:g} distinct secrets in 1h", f"usual {breadth_base:.1f}/h")))
    if fv["denied_ratio_1h"] >= 0.3:
        candidates.append((fv["denied_ratio_1h"], Reason(
            "DENIED_RATIO_HIGH", detector, "Many requests denied",
            f"{fv['denied_ratio_1h']:.0%} denied in 1h", "usually none")))
    if fv["secret_first_seen"]:
        candidates.append((0.5, Reason("SECRET_FIRST_SEEN", detector,
                                       "Secret never accessed by this identity before",
                                       e.secret, f"{len(state.secrets_seen)} known secrets")))
    if fv["user_agent_first_seen"]:
        candidates.append((0.5, Reason("USER_AGENT_FIRST_SEEN", detector,
                                       "User agent never used by this identity",
                                       e.user_agent, f"{len(state.agents_seen)} known agents")))
    candidates.sort(key=lambda c: -c[0])
    reasons = [r for _, r in candidates[:5]]
    return reasons or [Reason("UNUSUAL_COMBINATION", detector,
                              "Unusual combination of features for this identity",
                              "see features", f"{state.history} events of history")]
