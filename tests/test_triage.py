"""Triage: one finding per identity per incident, allowlists with expiry, change windows from
config and from a feed, false-positive labels, the severity floor and the calibrated ensemble."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from typer.testing import CliRunner

from secretscope.models.base import ScoreBatch
from secretscope.models.ensemble import combine, detector_score, rule_score, severity_of
from secretscope.models.rules import load_rules
from secretscope.config import AllowEntry, ChangeWindow, TriageSettings, load_settings
from secretscope.errors import ConfigError
from secretscope.features import FeatureExtractor
from secretscope.segments import SegmentTable
from secretscope.suppression import FalsePositivePattern, Suppressions, load_change_window_feed
from secretscope.triage import StreamingDetectorInfo, Triage

from helpers import T0, created, every, make_event

SETTINGS = load_settings()
RULES = {r.id: r for r in load_rules(SETTINGS.rules_dir())}
HST = StreamingDetectorInfo("hst", 0.97, 0.99)


def fleet(extractor, n=200, identity="entity:svc-1", display="kubernetes-payments-api"):
    for t in every(T0, timedelta(minutes=5), n):
        extractor.learn(extractor.observe(make_event(at=t, identity=identity,
                                                     display_name=display)))


def hst_firing(fvs, score=0.98):
    n = len(fvs)
    return ScoreBatch("hst", np.full(n, score), np.ones(n, bool), np.ones(n, bool))


def make_triage(settings: TriageSettings | None = None, suppressions=None):
    fx = FeatureExtractor(SegmentTable((s.name, s.cidr) for s in SETTINGS.segments))
    fleet(fx)
    return fx, Triage(fx, settings or TriageSettings(), [HST], suppressions)


def observe(fx, at, **fields):
    fields.setdefault("display_name", "kubernetes-payments-api")
    return fx.observe(make_event(at=at, **fields))


def test_one_finding_per_incident_carrying_all_its_events():
    fx, triage = make_triage(TriageSettings(campaign_hours=0))  # no reopening (test_campaigns)
    start = T0 + timedelta(days=2)
    first = [observe(fx, start, path="secret/data/ledger/a")]
    (opened,) = triage.decide(first, [()], [hst_firing(first)])
    assert (opened.version, opened.activity_id, opened.status_id) == (1, 1, 1)
    later = [observe(fx, start + timedelta(minutes=m), path=f"secret/data/ledger/b{m}")
             for m in (5, 20, 50)]
    updates = triage.decide(later, [()] * 3, [hst_firing(later)])
    # each merge comes 5 minutes or more after the last version: an Update each
    assert [(u.id, u.version, u.activity_id, u.merged) for u in updates] == [
        (opened.id, 2, 2, 1), (opened.id, 3, 2, 2), (opened.id, 4, 2, 3)]
    grown = updates[-1]
    for fv in first + later:
        assert fv.event.event_id in grown.related_event_ids
    assert grown.last_time == later[-1].event.time and grown.time == opened.time
    assert triage.quieted["incident"] == 3
    # past the incident window (60 min after its last firing) it is closed, and a new one opens
    again = [observe(fx, start + timedelta(minutes=50 + 61))]
    closed, second = triage.decide(again, [()], [hst_firing(again)])
    assert (closed.id, closed.version, closed.activity_id, closed.status_id) == (
        opened.id, 5, 3, 4)
    assert closed.closed_time == start + timedelta(minutes=50 + 60)
    assert second.id != opened.id and second.activity_id == 1


def test_a_more_severe_firing_raises_the_open_finding_at_once():
    fx, triage = make_triage()
    start = T0 + timedelta(days=2)
    low = [observe(fx, start)]
    (medium,) = triage.decide(low, [()], [hst_firing(low)])
    assert medium.severity == "Medium"
    audit = [observe(fx, start + timedelta(minutes=2), operation="delete",
                     path="sys/audit/file-primary")]
    (raised,) = triage.decide(audit, [(RULES["vault-audit-device-change"],)],
                              [hst_firing(audit, 0.995)])
    assert raised.id == medium.id and raised.version == 2 and raised.raised
    assert raised.severity_id > medium.severity_id
    assert "vault-audit-device-change" in raised.detectors and "hst" in raised.detectors
    # the strongest reason leads, and the title is the strongest firing's
    assert raised.reasons[0].detector == "vault-audit-device-change"
    assert raised.title.startswith(RULES["vault-audit-device-change"].title)


def test_allowlist_until_it_expires():
    expires = T0 + timedelta(days=3)
    entry = AllowEntry(display_names=("kubernetes-payments-*",), detectors=("hst",),
                       expires=expires, note="load test, ticket SEC-1")
    fx, triage = make_triage(suppressions=Suppressions(allowlist=[entry]))
    before = [observe(fx, expires - timedelta(hours=1))]
    assert triage.decide(before, [()], [hst_firing(before)]) == []
    assert triage.quieted["allowlist"] == 1
    after = [observe(fx, expires + timedelta(hours=1))]
    assert len(created(triage.decide(after, [()], [hst_firing(after)]))) == 1


def test_allowlist_is_per_detector_and_needs_an_expiry_and_a_reason():
    entry = AllowEntry(policies=("payments-read",), detectors=("vault-bulk-*",),
                       expires=T0 + timedelta(days=9), note="migration")
    fx, triage = make_triage(suppressions=Suppressions(allowlist=[entry]))
    fv = [observe(fx, T0 + timedelta(days=2), policies=("default", "payments-read"))]
    assert len(created(triage.decide(fv, [()], [hst_firing(fv)]))) == 1  # hst is not covered
    with pytest.raises(ValueError, match="expires"):
        AllowEntry(display_names=("x",), note="n")
    with pytest.raises(ValueError, match="at least one of"):
        AllowEntry(expires=T0, note="n")


def test_suppression_rule_by_segment_covers_every_identity_there():
    scanner = AllowEntry(segments=("corp-vpn",), detectors=("hst",),
                         expires=T0 + timedelta(days=30),
                         note="vulnerability scanner on the VPN, ticket SEC-7")
    fx, triage = make_triage(suppressions=Suppressions(allowlist=[scanner]))
    from_vpn = [observe(fx, T0 + timedelta(days=2), identity=f"entity:u{i}",
                        remote_address="172.16.3.4") for i in range(3)]
    assert triage.decide(from_vpn, [()] * 3, [hst_firing(from_vpn)]) == []
    assert triage.quieted["allowlist"] == 3
    elsewhere = [observe(fx, T0 + timedelta(days=2), identity="entity:u9",
                         remote_address="203.0.113.4")]
    assert len(created(triage.decide(elsewhere, [()], [hst_firing(elsewhere)]))) == 1


def test_change_window_quiets_volume_detectors_not_control_plane_rules():
    window = ChangeWindow(start=T0 + timedelta(days=2), end=T0 + timedelta(days=2, hours=1),
                          kind="rotation", display_names=("kubernetes-payments-api",))
    fx, triage = make_triage(suppressions=Suppressions(windows=[window]))
    inside = [observe(fx, T0 + timedelta(days=2, minutes=10))]
    assert triage.decide(inside, [()], [hst_firing(inside)]) == []
    assert triage.quieted["change_window"] == 1
    tamper = [observe(fx, T0 + timedelta(days=2, minutes=20), operation="delete",
                      path="sys/audit/file-primary")]
    (found,) = triage.decide(tamper, [(RULES["vault-audit-device-change"],)],
                             [hst_firing(tamper)])
    assert found.detectors == ("vault-audit-device-change",)  # hst quiet, the rule is not


def test_change_window_feed_from_file_and_its_errors(tmp_path):
    feed = tmp_path / "windows.jsonl"
    feed.write_text('{"start": "2026-03-04T02:00:00Z", "end": "2026-03-04T02:30:00Z", '
                    '"kind": "rotation", "policies": ["secret-rotator"], "note": "weekly"}\n\n')
    (window,) = load_change_window_feed(feed)
    assert window.kind == "rotation" and window.policies == ("secret-rotator",)
    settings = load_settings(triage__change_window_feed=str(feed))
    sup = Suppressions.from_settings(settings)
    rotator = make_event(at=datetime(2026, 3, 4, 2, 10, tzinfo=timezone.utc),
                         policies=("default", "secret-rotator"))
    assert sup.why_quiet(rotator, "hst") == "change_window"
    assert sup.why_quiet(rotator, "vault-root-token-use") is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"start": "2026-03-04T02:00:00Z", "end": "2026-03-04T01:00:00Z", '
                   '"policies": ["p"]}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: .*end must be after start"):
        load_change_window_feed(bad)
    (tmp_path / "junk.jsonl").write_text("{}\nnot json\n")
    with pytest.raises(ConfigError, match=r"junk.jsonl:1"):
        load_change_window_feed(tmp_path / "junk.jsonl")


def test_false_positive_pattern_silences_same_identity_and_leading_reason():
    start = (T0 + timedelta(days=2)).timestamp()
    fp = FalsePositivePattern("entity:svc-1", frozenset({"SEGMENT_UNSEEN_FOR_PEERS"}), start,
                              start + 7 * 86400)
    fx, triage = make_triage(suppressions=Suppressions(false_positives=[fp]))
    fv = [observe(fx, T0 + timedelta(days=3), remote_address="203.0.113.9")]
    assert triage.decide(fv, [()], [hst_firing(fv)]) == []
    assert triage.quieted["false_positive"] == 1
    other = [observe(fx, T0 + timedelta(days=3), identity="entity:svc-2",
                     remote_address="203.0.113.9")]
    assert len(created(triage.decide(other, [()], [hst_firing(other)]))) == 1
    expired = [observe(fx, T0 + timedelta(days=10), remote_address="203.0.113.9")]
    assert len(created(triage.decide(expired, [()], [hst_firing(expired)]))) == 1


def test_below_min_severity_is_counted_not_raised():
    fx, triage = make_triage()
    write = [observe(fx, T0 + timedelta(days=2), operation="update",
                     path="sys/policies/acl/ledger-read")]
    low = RULES["vault-first-acl-policy-write"]
    assert low.severity_id == 2
    assert triage.decide(write, [(low,)], []) == []
    assert triage.quieted["below_min_severity"] == 1
    _, permissive = make_triage(TriageSettings(min_severity="low"))
    assert len(permissive.decide(write, [(low,)], [])) == 1


def test_ensemble_calibration():
    assert detector_score(0.97, 0.97, 0.99) == pytest.approx(0.5)
    assert detector_score(0.99, 0.97, 0.99) == pytest.approx(0.75)
    assert detector_score(1.0, 0.97, 0.99) == pytest.approx(0.9)
    assert detector_score(0.95, 0.95, 0.99, at_threshold=0.3) == pytest.approx(0.3)
    assert severity_of(combine([0.5])) == 3  # one medium
    assert severity_of(combine([0.5, 0.5])) == 4  # two independent mediums make a high
    assert severity_of(combine([0.75, 0.75])) == 5
    assert severity_of(combine([0.3])) == 2 and severity_of(combine([])) == 1
    assert rule_score(4) == 0.75


def test_fp_label_in_the_store_suppresses_repeats_on_the_next_replay(tmp_path):
    from secretscope.cli import app
    from secretscope.simulate import SimulationSpec, simulate
    from secretscope.store import Store

    log = tmp_path / "fleet.log"
    simulate(SimulationSpec(days=4, seed=5, target_calls=15000), log, tmp_path / "labels.jsonl")
    url = f"sqlite:///{tmp_path / 'store.db'}"

    def replay_findings(store_url):
        out = tmp_path / "alerts.jsonl"
        res = CliRunner().invoke(app, ["replay", str(log), "--store", store_url, "--quiet",
                                       "--no-table", "--alerts-out", str(out)])
        assert res.exit_code == 0, res.output
        import orjson
        return [orjson.loads(line) for line in out.read_bytes().splitlines()]

    first = replay_findings(url)
    assert first
    target = first[0]
    res = CliRunner().invoke(app, ["alerts", "label", target["finding_info"]["uid"], "fp",
                                   "--store", url])
    assert res.exit_code == 0, res.output
    second = replay_findings(url)
    identity, leading = target["actor"]["user"]["uid"], target["finding_info"]["types"][0]
    until = target["time"] + 7 * 86400 * 1000
    repeats = [f for f in second if f["actor"]["user"]["uid"] == identity
               and f["finding_info"]["types"][0] == leading and target["time"] <= f["time"] < until]
    assert repeats == []
    # everything else is still raised
    others = {f["finding_info"]["uid"] for f in first if f["actor"]["user"]["uid"] != identity}
    assert others <= {f["finding_info"]["uid"] for f in second}
    Store(url).close()


def test_a_running_pipeline_picks_up_new_labels(tmp_path):
    from secretscope.events import DENIED
    from secretscope.runner import Pipeline
    from secretscope.store import Store

    history = [make_event(at=t, path=f"secret/data/team/s{i % 3}")
               for i, t in enumerate(every(T0, timedelta(minutes=10), 600))]

    def burst(day):  # a deploy with a broken policy: many denials in a minute
        start = T0 + timedelta(days=day, hours=3)
        return [make_event(at=start + timedelta(seconds=5 * i), outcome=DENIED,
                           path=f"secret/data/ledger/s{i}") for i in range(12)]

    def run(label_in_between: bool):
        store = Store(f"sqlite:///{tmp_path / f'store-{label_in_between}.db'}")
        found = []
        # reread before every batch; the day-6 burst is a new finding, not a reopened campaign
        settings = load_settings(triage__labels_refresh_seconds=0, triage__campaign_hours=0)
        pipeline = Pipeline(settings, store=store, on_version=found.append)
        pipeline.process_batch(history)
        first = created(pipeline.process_batch(burst(5)))
        if label_in_between:
            for f in first:
                store.label_finding(f.id, "fp", "broken deploy, fixed")
        second = created(pipeline.process_batch(burst(6)))
        store.close()
        return first, second, pipeline.triage.quieted["false_positive"]

    first, second, _ = run(False)
    assert first and {f.reasons[0].code for f in second} == {f.reasons[0].code for f in first}
    assert all(f.reasons[0].code.startswith("DENIED") for f in first)
    first, second, quieted = run(True)
    assert first and second == [] and quieted >= len(first)
