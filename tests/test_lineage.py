"""AppRole lineage: who manages each role, secret ids minted by outsiders, and the logins and reads
that follow them; then the two rules on a simulated drift world with its benign look-alikes."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from secretscope.config import load_settings
from secretscope.features import FeatureExtractor
from secretscope.lineage import LineageTracker
from secretscope.segments import SegmentTable
from secretscope.simulate import simulate, world_spec
from secretscope.simulate.drift_benign import ORCHESTRATOR_ROLE

from helpers import T0, make_event

SETTINGS = load_settings()
ENGINEER = dict(identity="entity:erin", policies=("default", "payments-dev"), auth_method="oidc",
                mount_type="approle", remote_address="172.16.4.20")
OWNER = dict(identity="entity:deployer", policies=("default", "deploy"), auth_method="approle",
             mount_type="approle", remote_address="10.40.1.9")
ROLE = "nightly-reports"
ATTACKER = "203.0.113.7"
FEATURES = ("secret_id_mint_unmanaged", "login_minted_by_outsider", "seq_outsider_mint_then_read")


def _fx() -> FeatureExtractor:
    return FeatureExtractor(SegmentTable((s.name, s.cidr) for s in SETTINGS.segments))


def _call(who: dict, hours: float, op: str, path: str, **fields):
    return make_event(T0 + timedelta(hours=hours), **{**who, "operation": op, "path": path,
                                                      **fields})


def _mint(who: dict, hours: float, role: str = ROLE, **fields):
    return _call(who, hours, "update", f"auth/approle/role/{role}/secret-id", **fields)


def _login(hours: float, role: str = ROLE, address: str = ATTACKER):
    return make_event(T0 + timedelta(hours=hours), identity=f"approle:{role}",
                      policies=("default", f"batch-{role}"), operation="update",
                      path="auth/approle/login", mount_type="approle", auth_method="approle",
                      is_login=True, remote_address=address)


def _read(hours: float, role: str = ROLE, address: str = ATTACKER):
    return make_event(T0 + timedelta(hours=hours), identity=f"approle:{role}",
                      policies=("default", f"batch-{role}"), path="secret/data/ledger/db",
                      auth_method="approle", remote_address=address)


def _warm_fx() -> FeatureExtractor:
    """An extractor whose lineage has watched for more than a day (mints are judged)."""
    fx = _fx()
    fx.observe(_call(dict(identity="entity:someone"), -100, "read", "auth/token/lookup-self"))
    return fx


def _verdicts(events, fx: FeatureExtractor | None = None) -> list[tuple[int, int, int]]:
    fx = fx or _warm_fx()
    return [tuple(int(fx.observe(e)[n]) for n in FEATURES) for e in events]


def test_outsider_mint_then_login_then_reads_of_that_session():
    got = _verdicts([
        _call(OWNER, -48, "update", f"auth/approle/role/{ROLE}"),  # the role's keeper
        _call(ENGINEER, 0, "read", f"auth/approle/role/{ROLE}/role-id"),
        _mint(ENGINEER, 0.01),
        _login(0.5),
        _read(0.6),
        _read(0.7, address="10.40.1.20"),  # another session of the role
        _read(1.6),  # more than an hour after the login
        _login(24.2),  # more than 24 h after the mint
    ])
    assert got == [(0, 0, 0), (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0), (0, 0, 0),
                   (0, 0, 0)]


def test_the_roles_keeper_minting_daily_is_not_flagged_nor_are_the_logins():
    got = _verdicts([
        _call(OWNER, -1, "update", f"auth/approle/role/{ROLE}"),
        _mint(OWNER, 22),  # under a day after its write: no standing yet
        _mint(OWNER, 48),
        _login(48.1, address="10.40.1.9"),
        _read(48.2, address="10.40.1.9"),
    ])
    assert got == [(0, 0, 0), (1, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)]


def test_creating_the_role_a_minute_before_minting_gives_no_standing():
    role = "payments-sync-3"
    got = _verdicts([
        _call(ENGINEER, 0, "update", f"auth/approle/role/{role}"),
        _call(ENGINEER, 0.02, "read", f"auth/approle/role/{role}/role-id"),
        _mint(ENGINEER, 0.03, role),
        _login(0.3, role),
        _read(0.31, role),
    ])
    assert got == [(0, 0, 0), (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]


def test_a_peer_managing_the_role_gives_standing():
    colleague = {**ENGINEER, "identity": "entity:frank"}
    assert _verdicts([
        _call(colleague, -30, "read", f"auth/approle/role/{ROLE}/role-id"),
        _mint(ENGINEER, 0),
    ])[-1] == (0, 0, 0)
    stranger = {**colleague, "policies": ("default", "ledger-dev")}
    assert _verdicts([
        _call(stranger, -30, "read", f"auth/approle/role/{ROLE}/role-id"),
        _mint(ENGINEER, 0),
    ])[-1] == (1, 0, 0)


def test_a_new_role_from_someone_whose_peers_look_after_approles():
    sre = dict(identity="entity:sre-1", policies=("default", "platform-admin"),
               auth_method="oidc", mount_type="approle")
    other_sre = {**sre, "identity": "entity:sre-2"}
    role = "ledger-export"
    got = _verdicts([
        _call(sre, -72, "update", "auth/approle/role/secret-rotator"),
        _call(other_sre, 0, "update", f"auth/approle/role/{role}"),
        _mint(other_sre, 0.01, role),
        # a role someone else keeps: the SRE's general standing does not extend to it
        _call(OWNER, -48, "update", f"auth/approle/role/{ROLE}"),
        _mint(other_sre, 0.02),
    ])
    assert got[2] == (0, 0, 0) and got[4] == (1, 0, 0)


def test_minting_as_an_outsider_earns_no_standing_over_other_roles():
    colleague = {**ENGINEER, "identity": "entity:frank"}  # same policies: a peer
    got = _verdicts([
        _call(ENGINEER, 0, "read", "auth/approle/role/ci-search-deploy/role-id"),
        _mint(ENGINEER, 0.01, "ci-search-deploy"),
        _call(colleague, 50, "read", "auth/approle/role/ci-billing-deploy/role-id"),
        _mint(colleague, 50.01, "ci-billing-deploy"),
        _mint(ENGINEER, 50.02, "nightly-reports"),
    ])
    assert [v[0] for v in got] == [0, 1, 0, 1, 1]


def test_the_roles_own_runs_after_an_outsider_mint_are_told_from_the_suspect_session():
    got = _verdicts([
        _login(-5, address="10.40.1.9"),  # the job's usual place
        _mint(ENGINEER, 0),
        _login(0.2),
        _login(0.3, address="10.40.1.12"),  # its scheduled run, from its usual segment
        _read(0.31, address="10.40.1.12"),
        _read(0.4),  # the suspect session is still followed
    ])
    assert got == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 1, 0), (0, 0, 0), (0, 0, 1)]


def test_mints_in_the_first_day_watched_are_not_judged():
    set_up = [_call(ENGINEER, 0, "update", f"auth/approle/role/{ROLE}"), _mint(ENGINEER, 0.01),
              _login(0.02), _read(0.03)]
    assert _verdicts(set_up, _fx()) == [(0, 0, 0)] * 4
    assert _verdicts([_mint(OWNER, 25), _mint(ENGINEER, 25.1)], _warm_fx()) == [(1, 0, 0)] * 2


def test_denied_mints_and_other_calls_change_nothing():
    got = _verdicts([
        _mint(ENGINEER, 0, outcome="denied", error="permission denied"),
        _call(ENGINEER, 0.1, "list", f"auth/approle/role/{ROLE}/secret-id"),
        _call(ENGINEER, 0.1, "read", f"auth/approle/role/{ROLE}"),
        _login(0.5),
        _read(0.6),
    ])
    assert got == [(0, 0, 0)] * 5


def test_a_later_mint_by_the_keeper_supersedes_the_outsiders():
    got = _verdicts([
        _call(OWNER, -48, "update", f"auth/approle/role/{ROLE}"),
        _mint(ENGINEER, 0),
        _mint(OWNER, 0.2),
        _login(0.5),
    ])
    assert got == [(0, 0, 0), (1, 0, 0), (0, 0, 0), (0, 0, 0)]


def test_roles_are_capped_least_recently_touched_first():
    tracker = LineageTracker(max_roles=2)
    for k, role in enumerate(("a", "b", "a", "c")):
        tracker.observe("entity:x", "p", f"auth/approle/role/{role}", "update", "approle", True,
                        False, False, "", "", float(k))
    assert list(tracker.roles) == ["a", "c"]


def test_lineage_survives_a_snapshot_of_the_pipeline():
    from secretscope import snapshot
    from secretscope.runner import Pipeline

    first = Pipeline(SETTINGS)
    first.process_batch([
        _call(dict(identity="entity:someone"), -100, "read", "auth/token/lookup-self"),
        _call(OWNER, -48, "update", f"auth/approle/role/{ROLE}"),
        _mint(ENGINEER, 0),
    ])
    restored = Pipeline(SETTINGS)
    snapshot.load(restored, snapshot.dump(first))
    assert restored.extractor.lineage.to_state() == first.extractor.lineage.to_state()
    assert restored.extractor.observe(_login(0.5))["login_minted_by_outsider"] == 1
    assert Pipeline(SETTINGS).extractor.observe(_login(0.5))["login_minted_by_outsider"] == 0


# -- a small drift world -------------------------------------------------------------------

RULES = {"vault-approle-secret-id-minted-by-outsider",
         "vault-approle-login-with-outsider-secret-id"}


@pytest.fixture(scope="module")
def drift_replay(tmp_path_factory):
    from secretscope.runner import Pipeline
    from secretscope.sources.files import replay
    from secretscope.store import Store

    d = tmp_path_factory.mktemp("lineage")
    log, labels = d / "audit.jsonl", d / "audit.labels.jsonl"
    simulate(world_spec("drift", 14, 3, 60_000), log, labels, d / "audit.windows.jsonl")
    settings = load_settings(store__url="sqlite://")
    versions: list = []
    store = Store(settings.store.url)
    try:
        Pipeline(settings, store=store, on_version=versions.append).run(replay([str(log)]))
    finally:
        store.close()
    requests = [r for r in map(orjson.loads, log.read_bytes().splitlines())
                if r["type"] == "request"]
    episodes = [orjson.loads(x) for x in labels.read_bytes().splitlines()]
    return requests, episodes, versions


def test_every_minting_episode_is_named_by_a_lineage_finding(drift_replay):
    _, episodes, versions = drift_replay
    minting = [set(e["request_ids"]) for e in episodes
               if e["class"] == "approle_secret_id_minting"]
    assert minting
    lineage = [f for f in versions if RULES & set(f.detectors)]
    for ids in minting:
        assert any(ids & set(f.related_event_ids) for f in lineage), sorted(ids)[:3]


def test_benign_secret_id_issuing_raises_nothing(drift_replay):
    requests, episodes, versions = drift_replay
    attack = {i for e in episodes for i in e["request_ids"]}
    issuing = {r["request"]["id"] for r in requests
               if r["request"]["path"].startswith("auth/approle/role/")
               and r["request"]["id"] not in attack}
    orchestrator = [r for r in requests if r["request"]["path"].endswith("/secret-id")
                    and r.get("auth", {}).get("metadata", {}).get("role_name") == ORCHESTRATOR_ROLE]
    assert len(orchestrator) >= 8 and len(issuing) > len(orchestrator)  # every working day
    named = {i for f in versions for i in f.related_event_ids}
    assert not issuing & named
    assert not [f.identity for f in versions
                if RULES & set(f.detectors) and not attack & set(f.related_event_ids)]
