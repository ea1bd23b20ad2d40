"""One calibrated score and severity from every detector that fired on an event.

Detectors speak different languages: a rule has a severity, Half-Space Trees a mass-based score,
the robust baseline a transformed z-score, the IsolationForest a training-set quantile. Each
firing is first put on one scale, a *calibrated score* in [0, 1] anchored on the detector's own
operating points:

* a rule: its severity (low 0.3, medium 0.5, high 0.75, critical 0.9);
* a scored detector: 0.5 at its ``threshold`` (0.3 if configured ``severity_at_threshold: low``)
  rising to 0.75 at its ``high_threshold`` and 0.9 at the top of its range, piecewise linear.

Firings are then combined as independent pieces of evidence, ``1 - prod(1 - c_i)``, so two
medium firings on one event make a high finding, and the severity is read off the combined score
with the same anchors. Higher = more anomalous, as everywhere above ``models/``.
"""

from __future__ import annotations

from collections.abc import Iterable

LOW, MEDIUM, HIGH, CRITICAL = 2, 3, 4, 5
SEVERITY_SCORE = {1: 0.1, LOW: 0.3, MEDIUM: 0.5, HIGH: 0.75, CRITICAL: 0.9}
_BANDS = ((0.9, CRITICAL), (0.75, HIGH), (0.5, MEDIUM), (0.3, LOW))


def rule_score(severity_id: int) -> float:
    return SEVERITY_SCORE.get(severity_id, 0.5)


def detector_score(score: float, threshold: float, high_threshold: float,
                   at_threshold: float = SEVERITY_SCORE[MEDIUM]) -> float:
    """A detector's raw score on the calibrated scale, anchored on its two thresholds:
    ``at_threshold`` (medium by default) at ``threshold``, high at ``high_threshold``."""
    if score < threshold:
        return at_threshold * max(0.0, score) / threshold if threshold > 0 else 0.0
    if score < high_threshold:
        return at_threshold + (0.75 - at_threshold) * (score - threshold) / (
            high_threshold - threshold)
    top = 1.0 - high_threshold
    return 0.75 + 0.15 * min(1.0, (score - high_threshold) / top if top > 0 else 1.0)


def combine(calibrated: Iterable[float]) -> float:
    remaining = 1.0
    for c in calibrated:
        remaining *= 1.0 - min(1.0, max(0.0, c))
    return 1.0 - remaining


def severity_of(score: float) -> int:
    for floor, severity in _BANDS:
        if score >= floor - 1e-12:
            return severity
    return 1
