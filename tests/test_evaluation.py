"""README: "A finding counts once however often its incident grew; an episode merged into a
finding counts as detected at the time of the merge." (models.evaluation.evaluate)"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from secretscope.models.evaluation import Episode, evaluate
from secretscope.findings import Finding, Reason, finding_id

from helpers import T0, make_event


def finding(trigger_id: str, related: tuple[str, ...]) -> Finding:
    ev = make_event(at=T0, event_id=trigger_id)
    return Finding(
        id=finding_id(("rules",), ev.identity, ev.event_id), time=T0, identity=ev.identity,
        display_name=ev.display_name, title="t", severity_id=3, score=0.6, detectors=("rules",),
        reasons=(Reason(code="c", detector="rules", text="t", observed="o", baseline="b"),),
        techniques=(), related_event_ids=related, trigger=ev, segment="k8s-prod")


def grown(f: Finding, related: tuple[str, ...], at: datetime) -> Finding:
    """The next version of ``f``: a firing merged into its incident at ``at``."""
    return replace(f, related_event_ids=f.related_event_ids + related, last_time=at,
                   merged=f.merged + 1)


EPISODE = Episode("ep-1", "offhours_bulk_read", T0 + timedelta(minutes=5),
                  T0 + timedelta(minutes=30), frozenset({"attack-1", "attack-2"}))


def test_a_grown_finding_counts_once_and_detects_at_the_merge():
    benign_start = finding("benign-1", ("benign-1",))
    v2 = grown(benign_start, ("attack-1",), T0 + timedelta(minutes=20))
    v3 = grown(v2, ("attack-2",), T0 + timedelta(minutes=40))
    false = finding("benign-9", ("benign-9",))
    false_v2 = grown(false, ("benign-10",), T0 + timedelta(minutes=50))
    report = evaluate([benign_start, v2, v3, false, false_v2], [EPISODE], total_events=1000)
    assert (report.findings, report.true_findings) == (2, 1)  # five versions, two findings
    assert report.precision == pytest.approx(0.5)
    (cls,) = report.classes
    assert (cls.episodes, cls.detected) == (1, 1)
    # detected when attack-1 was merged (minute 20), 15 minutes after the episode began
    assert cls.median_delay_seconds == pytest.approx(15 * 60)
    assert report.benign_events == 1000 - 2


def test_an_episode_no_version_names_is_missed():
    f = finding("benign-1", ("benign-1",))
    report = evaluate([f, grown(f, ("benign-2",), T0 + timedelta(minutes=20))], [EPISODE], 100)
    (cls,) = report.classes
    assert (cls.detected, report.true_findings, report.findings) == (0, 0, 1)
    assert report.recall == 0.0 and cls.median_delay_seconds is None
