"""Features that keep detection steady while a fleet drifts: concurrent networks, networks an
identity has used before, reads new for the whole role, peers that follow a change of team,
dormancy measured from the previous call. Each test fails without its feature."""

from __future__ import annotations

from datetime import timedelta

from secretscope.models.rules import RuleSet, load_rules
from secretscope.config import DEFAULT_CONFIG
from secretscope.features import FeatureExtractor, network_of
from secretscope.segments import SegmentTable

from helpers import T0, every, learn_all as observe_all, make_event

SEGMENTS = SegmentTable([("k8s-prod", "10.20.0.0/16"), ("corp-vpn", "172.16.0.0/16")])
RULES = RuleSet(load_rules(DEFAULT_CONFIG.parent / "rules"))
PERSON = dict(identity="entity:alice", display_name="alice", auth_method="oidc",
              user_agent="Mozilla/5.0 Firefox/135.0", policies=("default", "payments-dev"))


def fired(fv):
    return {r.id for r in RULES.evaluate_one(fv)}


def working_days(fx, days=3, address="172.16.{}.7", first=0, **fields):
    """A person's history: reads of the team's secrets through the day from the VPN, with a
    new VPN address per connection."""
    events = []
    for d in range(first, first + days):
        for i, t in enumerate(every(T0 + timedelta(days=d), timedelta(minutes=5), 90)):
            events.append(make_event(at=t, remote_address=address.format(i % 200),
                                     path=f"secret/data/payments/s{i % 6}", **{**PERSON, **fields}))
    return observe_all(fx, events)


def test_network_of_groups_a_segment_and_an_outside_range():
    assert network_of("corp-vpn", "172.16.4.5") == "corp-vpn"
    assert network_of("unknown", "81.2.33.4") == network_of("unknown", "81.2.200.9") == "unknown:81.2"
    assert network_of("unknown", "203.0.113.7") != network_of("unknown", "81.2.33.4")
    assert network_of("unknown", "2001:db9::1").startswith("unknown:2001:db9")


def test_a_stolen_session_used_elsewhere_while_its_owner_works_is_concurrent():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx)
    now = T0 + timedelta(days=3, hours=2)
    own = fx.observe(make_event(at=now, remote_address="172.16.9.9", **PERSON))
    assert own["networks_15m"] == 1  # a new VPN address is the same network
    thief = fx.observe(make_event(at=now + timedelta(minutes=6), remote_address="203.0.113.50",
                                  **PERSON))
    assert thief["networks_15m"] == 2 and thief["network_unfamiliar"] == 1
    assert "vault-concurrent-session" in fired(thief)
    # The same outside address an hour after the owner stopped is not concurrent.
    later = fx.observe(make_event(at=now + timedelta(minutes=80), remote_address="203.0.113.50",
                                  **PERSON))
    assert later["networks_15m"] == 1
    assert "vault-concurrent-session" not in fired(later)


def test_home_network_used_before_is_not_a_second_place():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx, days=2)
    working_days(fx, days=1, first=2, address="81.2.{}.40")  # a day at home (an ISP range)
    at = T0 + timedelta(days=4, hours=3)
    fx.observe(make_event(at=at, remote_address="172.16.3.3", **PERSON))
    home = fx.observe(make_event(at=at + timedelta(minutes=3), remote_address="81.2.99.1",
                                 **PERSON))
    assert home["networks_15m"] == 2 and home["network_unfamiliar"] == 0
    assert "vault-concurrent-session" not in fired(home)


def test_a_thiefs_calls_right_after_its_owner_stopped_do_not_make_its_network_familiar():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx)
    t = T0 + timedelta(days=3, hours=1)
    observe_all(fx, [make_event(at=t, remote_address="172.16.3.3", **PERSON)])
    # The owner stopped 20 minutes ago: the thief's calls are not concurrent, fire nothing and
    # are learned, but within the hour of the owner's call they do not make a habit.
    thief = observe_all(fx, [make_event(at=t + timedelta(minutes=20 + k),
                                        remote_address="203.0.113.9", **PERSON)
                             for k in range(30)])
    assert not any(fired(fv) & {"vault-concurrent-session"} for fv in thief)
    t = T0 + timedelta(days=4, hours=1)
    fx.observe(make_event(at=t, remote_address="172.16.3.3", **PERSON))
    again = fx.observe(make_event(at=t + timedelta(minutes=2), remote_address="203.0.113.77",
                                  **PERSON))
    assert again["network_unfamiliar"] == 1
    assert "vault-concurrent-session" in fired(again)
    # Calls from a network with no other network in the hour do make it familiar.
    later = T0 + timedelta(days=6)
    observe_all(fx, [make_event(at=later + timedelta(minutes=k), remote_address="203.0.113.9",
                                **PERSON) for k in range(3)])
    assert fx.observe(make_event(at=later + timedelta(minutes=4), remote_address="203.0.113.9",
                                 **PERSON))["network_unfamiliar"] == 0


def test_reads_new_for_the_role_are_counted_per_hour_and_day():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx)
    t = T0 + timedelta(days=4, hours=1)
    fvs = [fx.observe(make_event(at=t + timedelta(minutes=2 * k),
                                 path=f"secret/data/ledger/k{k}", **PERSON)) for k in range(3)]
    assert [fv["role_new_secrets_1h"] for fv in fvs] == [1, 2, 3]
    assert "vault-role-new-secrets-burst" in fired(fvs[-1])
    assert "vault-role-new-secrets-burst" not in fired(fvs[1])
    # A secret the role knows is not counted, and does not fire.
    known = fx.observe(make_event(at=t + timedelta(minutes=9), path="secret/data/payments/s1",
                                  remote_address="172.16.8.8", **PERSON))
    assert known["role_new_secrets_1h"] == 3 and not fired(known)


def test_a_slow_campaign_adds_up_over_the_day():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx)
    t = T0 + timedelta(days=3)
    fvs = [fx.observe(make_event(at=t + timedelta(hours=k), path=f"secret/data/ledger/k{k}",
                                 **PERSON)) for k in range(5)]
    assert [fv["role_new_secrets_1h"] for fv in fvs] == [1] * 5
    assert [fv["role_new_secrets_24h"] for fv in fvs] == [1, 2, 3, 4, 5]
    assert "vault-role-new-secrets-campaign" in fired(fvs[3])
    assert "vault-role-new-secrets-campaign" not in fired(fvs[2])


def test_secrets_a_peer_already_uses_are_not_new_for_the_role():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx)
    peer = dict(PERSON, identity="entity:bob", display_name="bob")
    t = T0 + timedelta(days=3)
    observe_all(fx, [make_event(at=t, path=f"secret/data/payments/x{k}", **peer)
                     for k in range(4)])
    fvs = [fx.observe(make_event(at=t + timedelta(minutes=k + 1),
                                 path=f"secret/data/payments/x{k}", **PERSON)) for k in range(4)]
    assert [fv["role_new_secrets_1h"] for fv in fvs] == [0] * 4


def test_peers_follow_a_change_of_team():
    fx = FeatureExtractor(SEGMENTS)
    newteam = ("default", "ledger-dev")
    colleague = dict(PERSON, identity="entity:carol", display_name="carol", policies=newteam)
    observe_all(fx, [make_event(at=t, path=f"secret/data/ledger/s{i % 5}", **colleague)
                     for i, t in enumerate(every(T0, timedelta(minutes=10), 300))])
    working_days(fx)
    moved = dict(PERSON, policies=newteam)
    fv = fx.observe(make_event(at=T0 + timedelta(days=3, hours=1),
                               path="secret/data/ledger/s1", **moved))
    assert fv["folder_peer_freq_class"] == 0  # the new team's folder is its peers' daily work
    assert fv["secret_peer_freq_class"] == 0
    assert fx.state("entity:alice").peer is fx.peer_group(newteam)


def test_dormancy_counts_from_the_previous_call_even_one_that_raised_a_finding():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx)
    back = T0 + timedelta(days=8)
    first = fx.observe(make_event(at=back, **PERSON))  # not learned, as if it had fired
    assert first["idle_days"] > 5
    second = fx.observe(make_event(at=back + timedelta(minutes=5), **PERSON))
    assert second["idle_days"] < 0.01


def test_a_returning_person_with_their_own_client_is_not_a_dormant_reactivation():
    fx = FeatureExtractor(SEGMENTS)
    working_days(fx)
    back = T0 + timedelta(days=12)
    home = fx.observe(make_event(at=back, remote_address="92.40.1.2", **PERSON))
    assert home["idle_days"] > 5 and home["network_unfamiliar"] == 1
    assert "vault-dormant-identity-reactivated" not in fired(home)
    stolen = fx.observe(make_event(at=back + timedelta(days=5), remote_address="198.51.100.3",
                                   **{**PERSON, "user_agent": "curl/8.5.0"}))
    assert "vault-dormant-identity-reactivated" in fired(stolen)


def test_a_young_role_reading_other_teams_folders_is_judged_without_long_history():
    fx = FeatureExtractor(SEGMENTS)
    young = dict(PERSON, identity="entity:dave", display_name="dave", policies=("default", "new"))
    observe_all(fx, [make_event(at=t, remote_address="172.16.4.4", **young,
                                path=f"secret/data/payments/s{i % 6}")
                     for i, t in enumerate(every(T0, timedelta(minutes=30), 60))])
    t = T0 + timedelta(days=2)
    own = [fx.observe(make_event(at=t + timedelta(minutes=k), remote_address="172.16.4.4",
                                 path=f"secret/data/payments/n{k}", **young)) for k in range(3)]
    assert own[-1]["role_new_secrets_1h"] == 3 and own[-1]["peer_history"] < 100
    assert not fired(own[-1])  # its own team's folder: a young role still learning its work
    other = [fx.observe(make_event(at=t + timedelta(minutes=10 + k), remote_address="172.16.4.4",
                                   path=f"secret/data/{team}/db", **young))
             for k, team in enumerate(("ledger", "search", "fraud"))]
    assert "vault-role-new-secrets-foreign-folders" in fired(other[-1])


def test_a_staging_role_reading_production_crosses_an_environment():
    fx = FeatureExtractor(SEGMENTS, [("staging", r"(^|/)(staging|stage|stg)(/|$)")])
    ci = dict(identity="approle:ci-search-test", display_name="ci", auth_method="approle",
              user_agent="Vault/1.19.2", policies=("default", "ci-search"))
    deploy = dict(ci, identity="approle:ci-search-deploy")
    for who, paths in ((ci, ["staging/a", "staging/b"]), (deploy, ["staging/a", "db"])):
        observe_all(fx, [make_event(at=t, remote_address="10.30.1.1", **who,
                                    path=f"secret/data/search/{paths[i % 2]}")
                         for i, t in enumerate(every(T0, timedelta(minutes=20), 120))])
    t = T0 + timedelta(days=2)
    assert fx.environment_of("secret/search/staging/a") == "staging"
    assert fx.environment_of("secret/search/db") == "production"
    prod = fx.observe(make_event(at=t, remote_address="10.30.1.1", path="secret/data/search/db",
                                 **ci))
    assert prod["environment_crossing"] == 1
    assert "vault-environment-crossing" in fired(prod)
    same = fx.observe(make_event(at=t, remote_address="10.30.1.1", path="secret/data/search/db",
                                 **deploy))  # the deploy pipeline reads production already
    assert same["environment_crossing"] == 0 and "vault-environment-crossing" not in fired(same)
    staging = fx.observe(make_event(at=t, remote_address="10.30.1.1",
                                    path="secret/data/search/staging/c", **ci))
    assert staging["environment_crossing"] == 0
