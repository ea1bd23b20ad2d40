"""The drift world of the simulator: deterministic, every drift and attack shape present, parsed
whole by secretscope, evaluated; and the default world unchanged by it."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from datetime import datetime, timezone

import orjson
import pytest
from typer.testing import CliRunner

from secretscope.cli import app
from secretscope.events import AccessEvent
from secretscope.simulate import SimulationSpec, simulate, world_spec
from secretscope.simulate.benign import BENIGN
from secretscope.simulate.drift import HOME_NETS, MIGRATION_ROLE, DriftWorld
from secretscope.simulate.drift_attacks import DRIFT_ATTACKS
from secretscope.simulate.drift_benign import autoscaling
from secretscope.sources.files import replay

SPEC = world_spec("drift", seed=5, target_calls=20_000)
NEW_CLASSES = {"insider_peer_team_read", "concurrent_session_token_theft",
               "approle_secret_id_minting", "ci_runner_prod_read", "low_and_slow_campaign"}
NS, HOUR, DAY = 1_000_000_000, 3600 * 1_000_000_000, 86400 * 1_000_000_000
START = int(SPEC.start.timestamp()) * NS
UNKNOWN_PREFIXES = ("203.0.113.", "198.51.100.")


def _ns(stamp: str) -> int:
    whole, _, frac = stamp.rstrip("Z").partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * NS + int(frac.ljust(9, "0"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("drift")
    summary = simulate(SPEC, d / "audit.jsonl", d / "audit.jsonl.labels.jsonl",
                       d / "audit.jsonl.windows.jsonl")
    raw = (d / "audit.jsonl").read_bytes()
    requests = [r for r in map(orjson.loads, raw.splitlines()) if r["type"] == "request"]
    labels = [orjson.loads(x) for x in (d / "audit.jsonl.labels.jsonl").read_bytes().splitlines()]
    return summary, raw, requests, labels, d


@pytest.fixture(scope="module")
def world():
    return DriftWorld(SPEC)


def _by_episode(run, cls: str) -> list[list[dict]]:
    _, _, requests, labels, _ = run
    by_id = {r["request"]["id"]: r for r in requests}
    return [[by_id[i] for i in e["request_ids"]] for e in labels if e["class"] == cls]


def _attack_ids(run) -> set[str]:
    return {i for e in run[3] for i in e["request_ids"]}


def _who(r: dict) -> str:
    meta = r["auth"].get("metadata") or {}
    if "role_name" in meta:
        return f"approle:{meta['role_name']}"
    if "service_account_name" in meta:
        return f"k8s:{meta['service_account_namespace']}/{meta['service_account_name']}"
    return r["auth"].get("entity_id", "")


# -- the default world is not changed by the drift world -------------------------------------


def test_default_world_output_is_unchanged():
    """Hashes written by the simulator before the drift world existed (same spec)."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        simulate(SimulationSpec(days=3, seed=11, target_calls=6000), d / "a.jsonl",
                 d / "l.jsonl", d / "w.jsonl")
        digest = {n: hashlib.sha256((d / n).read_bytes()).hexdigest()
                  for n in ("a.jsonl", "l.jsonl", "w.jsonl")}
    assert digest == {
        "a.jsonl": "a6fc561dcb6aa8555c83201f46113d95176f6040ec031ec296a38c966a857ed5",
        "l.jsonl": "81d4f7807506adcc441ffb756f595586c2dcc158f3d8c31b45d1ea73d47c97ee",
        "w.jsonl": "bc6dda58978e5a629468ac6fbfb45a487b3392d263895bd8d3d5b82bc6e3c485",
    }


# -- determinism, labels, parsing, evaluation ------------------------------------------------


def test_drift_world_is_deterministic_per_seed(run, tmp_path):
    _, raw, _, labels, d = run
    simulate(SPEC, tmp_path / "again.jsonl", tmp_path / "labels.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == raw
    assert (tmp_path / "labels.jsonl").read_bytes() == (d / "audit.jsonl.labels.jsonl").read_bytes()
    other = world_spec("drift", seed=6, target_calls=20_000)
    simulate(other, tmp_path / "other.jsonl")
    assert (tmp_path / "other.jsonl").read_bytes()[:100_000] != raw[:100_000]


def test_labels_list_every_class_old_and_new(run):
    summary, _, _, labels, _ = run
    classes = Counter(e["class"] for e in labels)
    assert set(classes) == set(DRIFT_ATTACKS) and NEW_CLASSES <= set(classes)
    assert len(classes) == 15 and all(n == 3 for n in classes.values())
    assert summary.episodes == dict(classes)
    ids = [i for e in labels for i in e["request_ids"]]
    assert len(ids) == len(set(ids)) == summary.attack_calls


def test_every_line_parses_without_dead_letters(run):
    summary, _, _, _, d = run
    items = list(replay([str(d / "audit.jsonl")]))
    dead = [i for i in items if not isinstance(i, AccessEvent)]
    assert dead == [] and len(items) == summary.calls
    identities = Counter(e.identity.split(":")[0] for e in items)
    # Identities as the parser names real ones: roles and service accounts from auth.metadata.
    assert identities["kubernetes"] > 0 and identities["approle"] > 0 and identities["entity"] > 0
    assert any(e.identity.startswith("kubernetes:") and "-staging/" in e.identity for e in items)


def test_secretscope_evaluate_reports_every_class(run):
    _, _, _, _, d = run
    result = CliRunner().invoke(app, ["evaluate", str(d / "audit.jsonl"), "--quiet"])
    assert result.exit_code == 0, result.output
    for cls in DRIFT_ATTACKS:
        assert cls in result.output
    assert "recall" in result.output and "false findings per 10k benign" in result.output


def test_cli_simulate_world_option(tmp_path):
    runner = CliRunner()
    out = tmp_path / "d.jsonl"
    result = runner.invoke(app, ["simulate", str(out), "--world", "drift", "--seed", "5",
                                 "--calls", "20000"])
    assert result.exit_code == 0, result.output
    classes = {orjson.loads(x)["class"] for x in (tmp_path / "d.jsonl.labels.jsonl").read_bytes().splitlines()}
    assert NEW_CLASSES <= classes
    bad = runner.invoke(app, ["simulate", str(out), "--world", "moon"])
    assert bad.exit_code != 0 and "moon" in bad.output
    short = runner.invoke(app, ["simulate", str(out), "--world", "drift", "--days", "7"])
    assert short.exit_code != 0 and "14 days" in short.output


# -- benign drift ----------------------------------------------------------------------------


def test_migration_job_reads_every_teams_secrets_once_and_copies_them(run, world):
    _, _, requests, _, _ = run
    mine = [r for r in requests if _who(r) == f"approle:{MIGRATION_ROLE}"]
    reads = Counter(r["request"]["path"] for r in mine if r["request"]["operation"] == "read")
    every = {s.path for team in world.teams.values() for s in team}
    assert set(reads) == every and set(reads.values()) == {1}
    copies = {r["request"]["path"] for r in mine if r["request"]["operation"] == "create"}
    assert copies == {p.replace("secret/data/", "kv-v2/data/", 1) for p in every}
    days = {(_ns(r["time"]) - START) // DAY for r in mine}
    assert days == set(world.migration_days) and len(days) >= 4
    windows = (run[4] / "audit.jsonl.windows.jsonl").read_text()
    assert MIGRATION_ROLE not in windows  # unannounced


def test_vpn_address_changes_within_one_human_session(run):
    _, _, requests, _, _ = run
    per_token = defaultdict(set)
    for r in requests:
        a = r["auth"]
        if "token_issue_time" in a and a.get("metadata", {}).get("email"):
            addr = r["request"]["remote_address"]
            if addr.startswith("172.16."):
                per_token[(a["accessor"], a["token_issue_time"])].add(addr)
    sizes = [len(v) for v in per_token.values()]
    assert sum(n > 1 for n in sizes) > len(sizes) / 3, Counter(sizes)


def test_home_working_from_public_addresses_with_the_usual_client(run, world):
    _, _, requests, _, _ = run
    attack = _attack_ids(run)
    home_nets = tuple(n + "." for n in HOME_NETS)
    clients = {h.actor.entity_id: set(h.uas) for h in world.all_humans}
    at_home = defaultdict(set)
    for r in requests:
        addr = r["request"]["remote_address"]
        # Anonymous calls (the OIDC auth_url step of a login) name nobody.
        if (r["request"]["id"] not in attack and addr.startswith(home_nets)
                and "entity_id" in r["auth"]):
            at_home[r["auth"]["entity_id"]].add(r["request"]["headers"]["user-agent"][0])
    assert len(at_home) >= 10
    # Same clients as in the office or on the VPN: only the address is new.
    assert all(uas <= clients[e] for e, uas in at_home.items())


def test_returning_engineer_is_away_nine_days_then_works_from_home(run, world):
    _, _, requests, _, _ = run
    key, (first, last) = next(iter(world.away.items()))
    h = next(x for x in world.humans if x.actor.key == key)
    days = defaultdict(set)
    for r in requests:
        if r["auth"].get("entity_id") == h.actor.entity_id and r["request"]["id"] not in _attack_ids(run):
            days[(_ns(r["time"]) - START) // DAY].add(r["request"]["remote_address"])
    assert last - first + 1 == 9
    assert not any(first <= d <= last for d in days) and days.keys() & {0, 1}
    back = min(d for d in days if d > last)
    assert all(a.startswith(tuple(n + "." for n in HOME_NETS)) for a in days[back])


def test_staging_copies_redeploy_on_pipelines_without_windows(run, world):
    _, _, requests, _, d = run
    staging = defaultdict(set)
    for r in requests:
        who = _who(r)
        if who.startswith("k8s:") and "-staging/" in who:
            staging[who].add(r["auth"].get("token_issue_time"))
            assert r["request"]["remote_address"].startswith("10.21.")
    assert len(staging) == len(world.staging) > 10
    # Redeployed many times a week: many token issue times each.
    assert sorted(len(v) for v in staging.values())[len(staging) // 2] >= 10
    kinds = {orjson.loads(x)["kind"] for x in (d / "audit.jsonl.windows.jsonl").read_bytes().splitlines()}
    assert kinds == {"rotation"}  # no deploy is announced in this world


def test_autoscaled_pods_log_in_from_new_addresses(world):
    calls = list(autoscaling(world))
    logins = [c for c in calls if c.kind == "login"]
    assert len(logins) > 20
    known = {ip for s in world.services for _, ips in s.epochs for ip in ips}
    assert sum(c.addr not in known for c in logins) > 0.9 * len(logins)


def test_services_move_team_with_new_identity_and_paths(run, world):
    _, _, requests, _, _ = run
    seen = defaultdict(list)
    for r in requests:
        seen[_who(r)].append((_ns(r["time"]), r["request"]["path"]))
    old_new = list(zip(world.moved_services[::2], world.moved_services[1::2]))
    assert len(old_new) == 2
    for old, new in old_new:
        o, n = seen[old.actor.key], seen[new.actor.key]
        assert o and n and max(t for t, _ in o) < min(t for t, _ in n)
        assert new.actor.team != old.actor.team and new.actor.entity_id != old.actor.entity_id
        assert all(p.startswith(f"secret/data/{new.actor.team}/") for _, p in n
                   if p.startswith("secret/"))


def test_engineers_change_team_and_policies(run, world):
    _, _, requests, _, _ = run
    before, after = world.movers[::2], world.movers[1::2]
    assert len(before) == 2
    for b, a in zip(before, after):
        pol = [(_ns(r["time"]), tuple(r["auth"]["policies"])) for r in requests
               if r["auth"].get("entity_id") == b.actor.entity_id and r["request"]["id"] not in _attack_ids(run)]
        olds = [t for t, p in pol if p == b.actor.policies]
        news = [t for t, p in pol if p == a.actor.policies]
        assert olds and news and max(olds) < min(news)


def test_new_services_start_mid_log(run, world):
    _, _, requests, _, _ = run
    first = {}
    for r in requests:
        first.setdefault(_who(r), _ns(r["time"]))
    assert len(world.new_services) == 3
    assert all(first[s.actor.key] >= START + 2 * DAY for s in world.new_services)


def test_holiday_on_call_weekends_and_admin_work(run, world):
    _, _, requests, _, _ = run
    attack = _attack_ids(run)
    human_logins = Counter()
    policy_edits = weekend_sre = 0
    sres = {h.actor.entity_id for h in world.humans if h.sre}
    new_device = []
    for r in requests:
        if r["request"]["id"] in attack:
            continue
        day = (_ns(r["time"]) - START) // DAY
        path = r["request"]["path"]
        if path.startswith("auth/oidc/oidc/callback") or path.startswith("auth/userpass/login"):
            human_logins[day] += 1
        if path.startswith("sys/policies/acl/") and r["request"]["operation"] == "update":
            policy_edits += r["auth"].get("entity_id") in sres
        if world.weekday(day) >= 5 and r["auth"].get("entity_id") in sres:
            weekend_sre += 1
        if path == "sys/audit/file-archive":
            new_device.append(r)
    workdays = [human_logins[d] for d in range(SPEC.days)
                if world.weekday(d) < 5 and d != world.holiday]
    assert human_logins[world.holiday] < min(workdays) / 4
    assert policy_edits >= SPEC.days and weekend_sre > 0
    assert len(new_device) == 1 and new_device[0]["request"]["operation"] == "update"


# -- attack shapes ---------------------------------------------------------------------------


def test_concurrent_token_theft_shares_the_owners_token_while_owner_is_on_vpn(run):
    _, _, requests, _, _ = run
    for ep in _by_episode(run, "concurrent_session_token_theft"):
        accessor = ep[0]["auth"]["accessor"]
        assert all(r["request"]["remote_address"].startswith(UNKNOWN_PREFIXES) for r in ep)
        lo, hi = _ns(ep[0]["time"]) - 2 * HOUR, _ns(ep[-1]["time"]) + 2 * HOUR
        ids = {r["request"]["id"] for r in ep}
        owner = [r for r in requests if r["auth"].get("accessor") == accessor
                 and r["request"]["id"] not in ids and lo <= _ns(r["time"]) <= hi]
        assert owner and all(r["auth"]["token_issue_time"] == ep[0]["auth"]["token_issue_time"]
                             for r in owner)
        assert all(r["request"]["remote_address"].startswith("172.16.") for r in owner)


def test_secret_id_minting_then_login_and_reads(run):
    for ep in _by_episode(run, "approle_secret_id_minting"):
        paths = [r["request"]["path"] for r in ep]
        mint = next(i for i, p in enumerate(paths) if p.endswith("/secret-id"))
        login = paths.index("auth/approle/login")
        role = paths[mint].split("/")[3]
        assert mint < login and paths[login + 1:] and all(p.startswith("secret/data/")
                                                          for p in paths[login + 1:])
        assert "entity_id" in ep[mint]["auth"] and "role_name" not in ep[mint]["auth"].get("metadata", {})
        assert ep[-1]["auth"]["metadata"]["role_name"] == role


def test_ci_runner_reads_production_secrets_from_the_ci_segment(run):
    for ep in _by_episode(run, "ci_runner_prod_read"):
        assert all(r["request"]["remote_address"].startswith("10.30.") for r in ep)
        reads = [r["request"]["path"] for r in ep if r["request"]["path"].startswith("secret/")]
        assert any("/staging/" not in p and "/ci/" not in p for p in reads)


def test_low_and_slow_is_one_extra_read_an_hour_for_two_days(run):
    for ep in _by_episode(run, "low_and_slow_campaign"):
        times = sorted(_ns(r["time"]) for r in ep)
        assert 40 * HOUR <= times[-1] - times[0] <= 50 * HOUR
        per_hour = Counter((t - times[0]) // HOUR for t in times)
        assert len(ep) >= 40 and max(per_hour.values()) <= 2
        assert len({_who(r) for r in ep}) == 1 and _who(ep[0]).startswith("k8s:")


def test_insider_reads_a_peer_team_from_their_usual_connection(run, world):
    _, _, requests, _, _ = run
    for ep in _by_episode(run, "insider_peer_team_read"):
        token = (ep[0]["auth"]["accessor"], ep[0]["auth"]["token_issue_time"])
        ids = {r["request"]["id"] for r in ep}
        own = [r for r in requests if r["request"]["id"] not in ids
               and (r["auth"].get("accessor"), r["auth"].get("token_issue_time")) == token]
        assert own  # the engineer's own session, same token
        usual = {r["request"]["remote_address"] for r in own}
        assert ep[0]["request"]["remote_address"] in usual
        assert all(r["request"]["remote_address"].startswith("172.16.") for r in ep)
        teams = {r["request"]["path"].split("/")[2] for r in ep}
        own_team = ep[0]["auth"]["policies"][1].removesuffix("-dev")
        assert len(teams) == 1 and own_team not in teams
        reads = {r["request"]["path"] for r in ep if r["request"]["operation"] == "read"}
        shared = {x.path for x in world.shared[world.partner[own_team]]}
        assert reads and not reads & shared  # never the secrets shared with them


def test_engineers_read_their_partner_teams_shared_secrets(run, world):
    """The benign look-alike of the insider: cross-team reads, of the shared secrets only."""
    _, _, requests, _, _ = run
    attack = _attack_ids(run)
    teams = {h.actor.entity_id: h.actor.team for h in world.humans if not h.sre}
    cross = Counter()
    for r in requests:
        e, path = r["auth"].get("entity_id"), r["request"]["path"]
        if (e in teams and r["request"]["id"] not in attack and path.startswith("secret/data/")
                and path.split("/")[2] != teams[e]):
            cross[path.split("/")[2] == world.partner[teams[e]]] += 1
    # A typo in a team name is the only other way out of one's own folder.
    assert cross[True] > 50 and cross[False] < cross[True] / 5


def test_deploy_pipelines_read_one_production_secret(run, world):
    _, _, requests, _, _ = run
    attack = _attack_ids(run)
    prod = defaultdict(set)
    for r in requests:
        who, path = _who(r), r["request"]["path"]
        if (who.startswith("approle:ci-") and r["request"]["id"] not in attack
                and path.startswith("secret/data/") and "/staging/" not in path):
            prod[who].add(path)
    deploys = {f"approle:{j.actor.metadata['role_name']}" for j in world.ci
               if "-deploy" in j.actor.metadata["role_name"]}
    assert set(prod) == deploys
    assert all(len([p for p in v if "/ci/" not in p]) == 1 for v in prod.values())


def test_default_benign_generators_are_not_changed_by_the_drift_ones():
    names = [g.__name__ for g in BENIGN]
    assert names == ["service_logins", "human_days", "ci_runs", "batch_runs",
                     "dynamic_credentials", "secret_rotation"]


@pytest.mark.slow  # one more replay of the two-week log
def test_quality_benchmark_gates_the_drift_world(run, tmp_path):
    import gzip
    import re
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    _, _, _, labels, d = run
    # The benchmark's cache names: the log it would simulate for this seed and size.
    stem = tmp_path / "quality-drift-14d-20000-5.log"
    stem.with_suffix(".log.gz").write_bytes(gzip.compress((d / "audit.jsonl").read_bytes()))
    shutil.copyfile(d / "audit.jsonl.labels.jsonl", tmp_path / (stem.name + ".labels.jsonl"))
    shutil.copyfile(d / "audit.jsonl.windows.jsonl", tmp_path / (stem.name + ".windows.jsonl"))
    bench = [sys.executable, str(ROOT / "benchmarks" / "detection_quality.py"), "--world",
             "drift", "--seeds", "5", "--calls", "20000", "--cache", str(tmp_path)]
    # A 20k-call fortnight is too thin for the real targets: lenient ones pass...
    lenient = ["--min-recall", "0", "--min-precision", "0", "--max-false-per-10k", "1e9",
               "--max-findings-per-episode", "1000"]
    proc = subprocess.run(bench + lenient, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^  (\w+)\s+(\d+)/(\d+) episodes .* findings (\d+) "
                      r"\(at most (\d+) per episode\)$", proc.stdout, re.M)
    assert {r[0] for r in rows} == set(DRIFT_ATTACKS)
    assert all(int(r[2]) == 3 for r in rows)
    assert all(int(r[4]) <= int(r[3]) for r in rows)
    # ...and each target is applied to the drift world.
    for option, value, said in (("--min-recall", "1.01", "recall"),
                                ("--max-findings-per-episode", "0", "findings > 0")):
        strict = lenient[:]
        strict[strict.index(option) + 1] = value
        enforced = subprocess.run(bench + strict, capture_output=True, text=True, timeout=300)
        assert enforced.returncode == 1 and said in enforced.stderr, enforced.stderr


def test_token_theft_needs_no_vpn_day_of_its_victim(tmp_path):
    """Seed 4 at 60k calls picks a victim who was never on the VPN in the attack days: the
    theft happens in one of their other sessions instead of failing the simulation."""
    spec = world_spec("drift", seed=4, target_calls=60_000)
    simulate(spec, tmp_path / "a.jsonl", tmp_path / "a.labels.jsonl", tmp_path / "a.windows.jsonl")
    labels = [orjson.loads(x) for x in (tmp_path / "a.labels.jsonl").read_bytes().splitlines()]
    assert Counter(e["class"] for e in labels)["concurrent_session_token_theft"] == 3
