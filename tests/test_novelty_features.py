"""Novelty with frequency classes, peer groups, sequences, dormancy, periodicity, working hours,
list ratio and denied breadth: each feature against hand-built event streams."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest

from secretscope.events import DENIED, FAILED
from secretscope.features import FEATURE_NAMES, FeatureExtractor
from secretscope.novelty import (FREQUENT, INFREQUENT, RARE, UNSEEN, agent_family, frequency_class,
                              peer_key)
from secretscope.segments import SegmentTable

from helpers import T0, every, learn_all, make_event

SEGMENTS = SegmentTable([("k8s-prod", "10.20.0.0/16"), ("corp-vpn", "172.16.0.0/16")])
TEAM = ("default", "payments-read")


def service(identity="entity:svc-1", n=300, secrets=3, step=timedelta(minutes=5), start=T0,
            **fields):
    return [make_event(at=t, identity=identity, policies=TEAM,
                       path=f"secret/data/payments/s{i % secrets}", **fields)
            for i, t in enumerate(every(start, step, n))]


def test_frequency_classes_follow_share_of_history():
    assert frequency_class(0, 100) == UNSEEN
    assert frequency_class(1, 1000) == RARE  # 0.1%
    assert frequency_class(5, 100) == INFREQUENT  # 5%
    assert frequency_class(50, 100) == FREQUENT
    fx = FeatureExtractor(SEGMENTS)
    # 1000 reads: s0 most of the time, s1 5% of the time, s2 once
    events = [make_event(at=T0 + timedelta(minutes=i),
                         path="secret/data/payments/" + ("s2" if i == 500 else
                                                         "s1" if i % 20 == 0 else "s0"))
              for i in range(1000)]
    learn_all(fx, events)
    at = T0 + timedelta(minutes=1001)
    classes = [fx.observe(make_event(at=at, path=f"secret/data/payments/{s}"))["secret_freq_class"]
               for s in ("s0", "s1", "s2", "s9")]
    assert classes == [FREQUENT, INFREQUENT, RARE, UNSEEN]


def test_every_dimension_has_a_class_and_not_applicable_is_frequent():
    fx = FeatureExtractor(SEGMENTS)
    learn_all(fx, service())
    at = T0 + timedelta(days=2)
    odd = fx.observe(make_event(at=at, policies=TEAM, path="secret/data/ledger/db",
                                remote_address="203.0.113.9", user_agent="curl/8.5.0",
                                operation="list", auth_method="approle", mount_type="kv-v2"))
    for dim in ("secret", "folder", "operation", "segment", "ip", "user_agent", "auth_method",
                "mount"):
        assert odd[f"{dim}_freq_class"] == UNSEEN, dim
    # a control-plane call has no secret or folder: those dimensions do not apply
    sys_call = fx.observe(make_event(at=at, policies=TEAM, path="sys/mounts"))
    assert sys_call["secret_freq_class"] == FREQUENT and sys_call["folder_freq_class"] == FREQUENT


def test_user_agent_family_ignores_versions():
    assert agent_family("vault-agent/1.19.2") == agent_family("vault-agent/1.19.3") == "vault-agent"
    assert agent_family("Mozilla/5.0 (X11; Linux x86_64; rv:135.0) Gecko/20100101 Firefox/135.0") \
        == "firefox"
    assert agent_family("curl/8.5.0") == "curl"
    fx = FeatureExtractor(SEGMENTS)
    learn_all(fx, service(user_agent="vault-agent/1.19.2"))
    upgraded = fx.observe(make_event(at=T0 + timedelta(days=2), policies=TEAM,
                                     path="secret/data/payments/s0",
                                     user_agent="vault-agent/1.19.3"))
    assert upgraded["user_agent_first_seen"] == 0


def test_novelty_is_normalized_by_the_identitys_rate_of_new_values():
    fx = FeatureExtractor(SEGMENTS)
    # a service that always reads the same 3 secrets, and a human who reads a new one half the time
    learn_all(fx, service("entity:svc", n=200))
    learn_all(fx, [make_event(at=t, identity="entity:human", policies=("default", "payments-dev"),
                              path=f"secret/data/payments/h{i // 2}")
                   for i, t in enumerate(every(T0, timedelta(minutes=5), 200))])
    at = T0 + timedelta(days=1)
    svc = fx.observe(make_event(at=at, identity="entity:svc", policies=TEAM,
                                path="secret/data/payments/new"))
    human = fx.observe(make_event(at=at, identity="entity:human",
                                  policies=("default", "payments-dev"),
                                  path="secret/data/payments/new"))
    assert svc["secret_first_seen"] == human["secret_first_seen"] == 1
    assert svc["novelty_score"] > 0.9 and human["novelty_score"] < 0.6


def test_peers_share_what_they_have_seen_and_cold_start_uses_them():
    assert peer_key(("default", "b", "a")) == peer_key(("a", "b")) == "a,b"
    fx = FeatureExtractor(SEGMENTS)
    learn_all(fx, service("entity:svc-1", n=400))
    learn_all(fx, service("entity:svc-2", n=400, secrets=2))
    # a brand-new member of the same role: its own history is empty, its peers' is not
    newcomer = fx.observe(make_event(at=T0 + timedelta(days=3), identity="entity:svc-3",
                                     policies=TEAM, path="secret/data/payments/s1"))
    assert newcomer["history_events"] == 0 and newcomer["secret_freq_class"] == UNSEEN
    assert newcomer["secret_peer_freq_class"] == FREQUENT
    assert newcomer["peer_members"] == 2 and newcomer["peer_history"] == 800
    assert newcomer["hour_of_day_peer_share"] > 0
    other_team = fx.observe(make_event(at=T0 + timedelta(days=3), identity="entity:svc-3",
                                       policies=TEAM, path="secret/data/ledger/db"))
    assert other_team["folder_peer_freq_class"] == UNSEEN
    assert other_team["secret_peer_freq_class"] == UNSEEN
    # an identity with other policies has its own group
    stranger = fx.observe(make_event(at=T0 + timedelta(days=3), identity="entity:x",
                                     policies=("default", "ledger-read")))
    assert stranger["peer_history"] == 0 and stranger["peer_members"] == 0


def test_policy_write_is_judged_against_the_role():
    fx = FeatureExtractor(SEGMENTS)
    admins = ("default", "platform-admin")
    learn_all(fx, [make_event(at=T0, identity="entity:sre-1", policies=admins,
                              operation="update", path="sys/policies/acl/x")])
    other_admin = fx.observe(make_event(at=T0 + timedelta(hours=1), identity="entity:sre-2",
                                        policies=admins, operation="update",
                                        path="sys/policies/acl/y"))
    assert other_admin["policy_write_first_seen"] == 1
    assert other_admin["policy_write_peer_first_seen"] == 0
    service_write = fx.observe(make_event(at=T0 + timedelta(hours=1), policies=TEAM,
                                          operation="update", path="sys/policies/acl/y"))
    assert service_write["policy_write_peer_first_seen"] == 1


def test_sequences_within_their_windows():
    fx = FeatureExtractor(SEGMENTS)
    learn_all(fx, service(n=100))
    t = T0 + timedelta(days=1)
    lists = [make_event(at=t + timedelta(seconds=10 * i), policies=TEAM, operation="list",
                        path=f"secret/metadata/team{i}/") for i in range(3)]
    learn_all(fx, lists)
    read = fx.observe(make_event(at=t + timedelta(minutes=5), policies=TEAM))
    assert read["seq_list_then_read"] == 1
    late = fx.observe(make_event(at=t + timedelta(minutes=30), policies=TEAM))
    assert late["seq_list_then_read"] == 0

    t += timedelta(hours=2)
    learn_all(fx, [make_event(at=t, policies=TEAM, operation="update",
                              path="sys/policies/acl/payments-read")])
    assert fx.observe(make_event(at=t + timedelta(minutes=30), policies=TEAM))[
        "seq_policy_change_then_read"] == 1
    assert fx.observe(make_event(at=t + timedelta(minutes=90), policies=TEAM))[
        "seq_policy_change_then_read"] == 0

    t += timedelta(hours=3)
    learn_all(fx, [make_event(at=t + timedelta(seconds=i), policies=TEAM, outcome=DENIED,
                              path=f"secret/data/ledger/s{i}") for i in range(5)])
    assert fx.observe(make_event(at=t + timedelta(minutes=2), policies=TEAM))[
        "seq_denied_then_success"] == 1

    t += timedelta(hours=3)
    learn_all(fx, [make_event(at=t, policies=TEAM, operation="update", path="auth/token/create")])
    assert fx.observe(make_event(at=t + timedelta(minutes=10), policies=TEAM))[
        "seq_token_create_then_read"] == 1


def test_failed_logins_then_success_and_new_segment_login_then_read():
    fx = FeatureExtractor(SEGMENTS)
    learn_all(fx, service(n=100))
    t = T0 + timedelta(days=1)
    learn_all(fx, [make_event(at=t + timedelta(seconds=i), policies=TEAM, is_login=True,
                              outcome=FAILED, operation="update", path="auth/userpass/login/x")
                   for i in range(5)])
    login = make_event(at=t + timedelta(seconds=30), policies=TEAM, is_login=True,
                       operation="update", path="auth/userpass/login/x",
                       remote_address="203.0.113.4")
    fv = fx.observe(login)
    assert fv["seq_denied_then_success"] == 1
    fx.learn(fv)  # a login from a segment the identity never used, learned
    read = fx.observe(make_event(at=t + timedelta(minutes=5), policies=TEAM))
    assert read["seq_new_segment_login_then_read"] == 1
    much_later = fx.observe(make_event(at=t + timedelta(hours=2), policies=TEAM))
    assert much_later["seq_new_segment_login_then_read"] == 0


def test_dormancy_periodicity_and_interval():
    fx = FeatureExtractor(SEGMENTS)
    clockwork = learn_all(fx, service(n=300, step=timedelta(minutes=5)))
    assert clockwork[-1]["periodicity"] > 0.9
    assert clockwork[-1]["interval_deviation"] < 0.5
    back = fx.observe(make_event(at=clockwork[-1].event.time + timedelta(days=4), policies=TEAM,
                                 path="secret/data/payments/s0"))
    assert back["idle_days"] == pytest.approx(4.0)
    assert back["interval_deviation"] > 5
    # an irregular caller is less periodic
    fx2 = FeatureExtractor(SEGMENTS)
    gaps = [1, 600, 5, 3000, 30, 7, 900, 2, 60, 4000] * 30
    t, events = T0, []
    for g in gaps:
        t += timedelta(seconds=g)
        events.append(make_event(at=t, policies=TEAM))
    assert learn_all(fx2, events)[-1]["periodicity"] < 0.5


def test_working_hours_distance_and_list_ratio_and_denied_breadth():
    fx = FeatureExtractor(SEGMENTS)
    # weekdays 09:00-17:00 UTC only
    history = [e for e in service(n=3000, step=timedelta(minutes=10))
               if 9 <= e.time.hour < 17]
    learn_all(fx, history)
    day = history[-1].time.replace(hour=0, minute=0) + timedelta(days=1)
    inside = fx.observe(make_event(at=day + timedelta(hours=11), policies=TEAM))
    night = fx.observe(make_event(at=day + timedelta(hours=3), policies=TEAM))
    assert inside["working_hours_distance"] == 0
    assert night["working_hours_distance"] == 6  # 03:00 -> 09:00
    t = day + timedelta(hours=12)
    mixed = learn_all(fx, [make_event(at=t + timedelta(seconds=i), policies=TEAM,
                                      operation="list" if i % 2 else "read",
                                      outcome=DENIED if i < 6 else "success",
                                      path=f"secret/data/ledger/d{i}") for i in range(10)])
    assert mixed[-1]["denied_distinct_1h"] == 6
    # 5 lists (odd i) per 2 successful reads (i = 6, 8) in the hour
    assert mixed[-1]["list_to_read_ratio_1h"] == pytest.approx(5 / 2)


def test_unlearn_reverses_identity_and_peer_state_exactly():
    fx = FeatureExtractor(SEGMENTS)
    learn_all(fx, service("entity:svc-1", n=200))
    learn_all(fx, service("entity:svc-2", n=50))
    st = fx.state("entity:svc-1")
    before = (copy.deepcopy(st.counts), st.base.to_state(), copy.deepcopy(st.peer.to_state()))
    odd = [make_event(at=T0 + timedelta(days=3), identity="entity:svc-1", policies=TEAM,
                      is_login=True, operation="update", path="auth/kubernetes/login",
                      remote_address="203.0.113.9", user_agent="curl/8"),
           make_event(at=T0 + timedelta(days=3, minutes=1), identity="entity:svc-1",
                      policies=TEAM, operation="update", path="sys/policies/acl/p"),
           make_event(at=T0 + timedelta(days=3, minutes=2), identity="entity:svc-1",
                      policies=TEAM, path="secret/data/ledger/new")]
    fvs = [fx.observe(e) for e in odd]
    undos = [fx.learn(fv) for fv in fvs]
    new_segment_login = st.base.to_state()[5][5]
    assert new_segment_login > 0 and st.peer.policy_writes == 1
    for fv, undo in reversed(list(zip(fvs, undos))):
        fx.unlearn(fv, undo)
    after = (st.counts, st.base.to_state(), st.peer.to_state())
    assert after == before


def test_feature_names_follow_the_house_pattern():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    for name in FEATURE_NAMES:
        assert name == name.lower() and " " not in name
