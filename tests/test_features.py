"""Per-identity features: event time windows, profiles, novelty, segments, the pandas path."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from secretscope.config import load_settings
from secretscope.events import DENIED, FAILED
from secretscope.features import FEATURE_NAMES, FeatureExtractor, feature_frame, hour_slots
from secretscope.segments import UNKNOWN, SegmentTable

from helpers import T0, every, make_event

SEGMENTS = SegmentTable([("k8s-prod", "10.20.0.0/16"), ("k8s-canary", "10.20.9.0/24"),
                         ("corp-vpn", "172.16.0.0/16"), ("v6-lab", "2001:db8::/32")])


def observe_all(fx, events, learn=True):
    out = []
    for e in events:
        fv = fx.observe(e)
        if learn:
            fx.learn(fv)
        out.append(fv)
    return out


def test_segments_most_specific_unknown_and_ipv6():
    assert SEGMENTS.lookup("10.20.1.5") == "k8s-prod"
    assert SEGMENTS.lookup("10.20.9.7") == "k8s-canary"  # narrower network wins
    assert SEGMENTS.lookup("203.0.113.9") == UNKNOWN
    assert SEGMENTS.lookup("2001:db8::10") == "v6-lab"
    assert SEGMENTS.lookup("::ffff:172.16.4.20") == "corp-vpn"  # IPv4-mapped
    assert SEGMENTS.lookup("not-an-ip") == UNKNOWN and SEGMENTS.lookup("") == UNKNOWN


def test_default_config_segments_load():
    settings = load_settings()
    table = SegmentTable((s.name, s.cidr) for s in settings.segments)
    assert table.lookup("10.30.4.4") == "ci-runners" and table.lookup("::1") == "loopback"


def test_rate_windows_follow_event_time_not_wall_time():
    fx = FeatureExtractor(SEGMENTS)
    # 30 calls in 30 s, in 2018: the wall clock is years later and must not matter.
    start = T0.replace(year=2018)
    fvs = observe_all(fx, [make_event(at=t) for t in every(start, timedelta(seconds=1), 30)])
    last = fvs[-1]
    assert last["requests_count_1m"] == 30 and last["requests_count_1h"] == 30
    # 2 minutes later the 1-minute window is empty but for the new call; the hour still counts all
    later = fx.observe(make_event(at=start + timedelta(minutes=2, seconds=30)))
    assert later["requests_count_1m"] == 1 and later["requests_count_1h"] == 31
    # a day later only the 24h window is cleared of everything but itself
    next_day = fx.observe(make_event(at=start + timedelta(days=1, minutes=5)))
    assert next_day["requests_count_1h"] == 1 and next_day["requests_count_24h"] == 1


def test_distinct_secrets_and_denials():
    fx = FeatureExtractor(SEGMENTS)
    events = [make_event(at=T0 + timedelta(seconds=i), path=f"secret/data/other/s{i % 12}",
                         outcome=DENIED if i % 2 else "success") for i in range(24)]
    last = observe_all(fx, events)[-1]
    assert last["secrets_distinct_1h"] == 12 and last["secrets_distinct_24h"] == 12
    assert last["denied_count_5m"] == 12 and last["denied_ratio_1h"] == pytest.approx(0.5)
    # system paths are not secrets
    sys_fv = fx.observe(make_event(at=T0 + timedelta(seconds=30), path="sys/mounts"))
    assert sys_fv["secrets_distinct_1h"] == 12


def test_failed_logins_counted_per_account():
    fx = FeatureExtractor(SEGMENTS)
    fvs = observe_all(fx, [
        make_event(at=t, identity="login:userpass/victor", is_login=True, outcome=FAILED,
                   path="auth/userpass/login/victor")
        for t in every(T0, timedelta(seconds=5), 9)])
    assert fvs[-1]["login_failed_count_5m"] == 9


def test_hour_of_week_profile_and_novelty_learned_only_through_learn():
    assert hour_slots(T0.timestamp()) == (9, 9)  # Monday 09:00
    fx = FeatureExtractor(SEGMENTS)
    days = [T0 + timedelta(days=d) for d in range(5)]  # Mon-Fri at 09:00
    observe_all(fx, [make_event(at=t) for t in days])
    usual = fx.observe(make_event(at=T0 + timedelta(days=7)))
    assert usual["hour_of_day_share"] == 1.0 and usual["hour_of_week_share"] == pytest.approx(0.2)
    assert usual["segment_first_seen"] == 0 and usual["secret_first_seen"] == 0
    night = fx.observe(make_event(at=T0 + timedelta(days=5, hours=18), remote_address="203.0.113.5",
                                  path="secret/data/finance/payroll", user_agent="curl/8.5"))
    assert night["hour_of_day_share"] == 0.0 and night["hour_of_week_share"] == 0.0
    assert night["segment_first_seen"] == 1 and night["secret_first_seen"] == 1
    assert night["user_agent_first_seen"] == 1 and night.segment == UNKNOWN
    # observe() alone never changes the baseline: the same event is still novel
    again = fx.observe(make_event(at=T0 + timedelta(days=5, hours=18, minutes=1),
                                  remote_address="203.0.113.5", path="secret/data/finance/payroll"))
    assert again["segment_first_seen"] == 1 and again["history_events"] == 5
    fx.learn(again)
    third = fx.observe(make_event(at=T0 + timedelta(days=5, hours=18, minutes=2),
                                  remote_address="203.0.113.5", path="secret/data/finance/payroll"))
    assert third["segment_first_seen"] == 0 and third["secret_first_seen"] == 0


def test_policy_write_first_seen():
    fx = FeatureExtractor(SEGMENTS)
    first = fx.observe(make_event(operation="update", path="sys/policies/acl/admin"))
    assert first["policy_write_first_seen"] == 1
    fx.learn(first)
    second = fx.observe(make_event(operation="update", path="sys/policies/acl/other"))
    assert second["policy_write_first_seen"] == 0
    read = fx.observe(make_event(identity="entity:x", operation="read", path="sys/policies/acl/a"))
    assert read["policy_write_first_seen"] == 0


def test_identities_are_independent():
    fx = FeatureExtractor(SEGMENTS)
    observe_all(fx, [make_event(at=t) for t in every(T0, timedelta(seconds=1), 10)])
    other = fx.observe(make_event(identity="entity:other"))
    assert other["requests_count_1m"] == 1 and other["history_events"] == 0


def test_feature_frame_is_the_streaming_code():
    events = [make_event(at=t, path=f"secret/data/team/s{i % 3}")
              for i, t in enumerate(every(T0, timedelta(minutes=7), 40))]
    frame = feature_frame(events, SEGMENTS)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 40
    assert list(frame.columns[-len(FEATURE_NAMES):]) == list(FEATURE_NAMES)
    streamed = observe_all(FeatureExtractor(SEGMENTS), events)
    for row, fv in zip(frame[list(FEATURE_NAMES)].itertuples(index=False), streamed):
        assert tuple(row) == fv.values
    assert list(frame.index) == [e.event_id for e in events]


def _state_snapshot(st):
    """The whole baseline as plain data: hour profiles, history, learned events per value (in
    their order), distinct values per dimension, scalars and usual rates; and the peers'."""
    how, hod, history, seen, distinct, scalars, rates = st.base.to_state()
    return {"how": how, "hod": hod, "history": history, "seen": list(seen.items()),
            "distinct": distinct, "scalars": scalars, "rates": rates,
            "peer": repr(st.peer.to_state())}


def test_unlearn_exactly_reverses_learn():
    fx = FeatureExtractor(SEGMENTS)
    history = [make_event(at=t, path=f"secret/data/team/s{i % 4}")
               for i, t in enumerate(every(T0, timedelta(minutes=13), 200))]
    observe_all(fx, history)
    st = fx.state("entity:svc-1")
    before = _state_snapshot(st)
    # events that touch every part of the baseline: new hour, segment, secret, agent, policy
    odd = [make_event(at=T0 + timedelta(days=3, hours=1), remote_address="203.0.113.9",
                      path="secret/data/x/new", user_agent="curl/8"),
           make_event(at=T0 + timedelta(days=3, hours=2), operation="update",
                      path="sys/policies/acl/p")]
    fvs = [fx.observe(e) for e in odd]
    undos = []
    for fv in fvs:
        undos.append(fx.learn(fv))
    assert _state_snapshot(st) != before
    for fv, undo in reversed(list(zip(fvs, undos))):
        fx.unlearn(fv, undo)
    assert _state_snapshot(st) == before


def test_usual_rate_moves_per_completed_hour_not_per_event():
    fx = FeatureExtractor(SEGMENTS)
    # a quiet week: two reads an hour
    quiet = [make_event(at=t, path=f"secret/data/team/s{i % 2}")
             for i, t in enumerate(every(T0, timedelta(minutes=30), 7 * 48))]
    observe_all(fx, quiet)
    st = fx.state("entity:svc-1")
    start = T0 + timedelta(days=7, minutes=1)
    burst = [make_event(at=start + timedelta(seconds=10 * i), path=f"secret/data/other/s{i}")
             for i in range(120)]
    fvs = observe_all(fx, burst[:1])  # the first event of the hour folds the previous hour in
    usual = st.secrets_baseline
    assert 1.5 < usual < 2.5
    fvs = observe_all(fx, burst[1:])  # learned, yet the baseline holds until the hour is over
    assert st.secrets_baseline == usual
    assert fvs[-1]["secrets_ratio_1h"] > 30
