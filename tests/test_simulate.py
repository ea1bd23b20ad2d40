"""Tests for secretscope.simulate: a deterministic, well-formed, correctly labelled Vault audit log."""

from __future__ import annotations

import gzip
import io
from datetime import datetime, timezone

import orjson
import pytest

from secretscope.simulate import ATTACKS, SimulationSpec, World, main, simulate

SPEC = SimulationSpec(days=7, target_calls=25_000)
UNKNOWN_PREFIXES = ("203.0.113.", "198.51.100.")
NS, HOUR, DAY = 1_000_000_000, 3600 * 1_000_000_000, 86400 * 1_000_000_000
START = int(SPEC.start.timestamp()) * NS


def _ns(stamp: str) -> int:
    """Nanoseconds of a Vault time (RFC 3339, 'Z', 0-9 fractional digits)."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + int(frac.ljust(9, "0"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    summary = simulate(SPEC, d / "audit.jsonl", d / "labels.jsonl", d / "windows.jsonl")
    raw = (d / "audit.jsonl").read_bytes()
    records = [orjson.loads(line) for line in raw.splitlines()]
    labels = [orjson.loads(line) for line in (d / "labels.jsonl").read_bytes().splitlines()]
    return summary, raw, records, labels, d


def test_same_spec_gives_identical_bytes(run, tmp_path):
    _, raw, _, _, d = run
    simulate(SPEC, tmp_path / "again.jsonl", tmp_path / "labels.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == raw
    assert (tmp_path / "labels.jsonl").read_bytes() == (d / "labels.jsonl").read_bytes()


def test_another_seed_gives_another_log(run):
    _, raw, _, _, _ = run
    out = io.StringIO()
    simulate(SimulationSpec(days=7, seed=8, target_calls=25_000), out, None)
    assert out.getvalue().encode() != raw


def test_gzip_output_is_readable_and_reproducible(tmp_path):
    small = SimulationSpec(days=2, target_calls=5_000)
    simulate(small, tmp_path / "plain.jsonl", None)
    simulate(small, tmp_path / "a.jsonl.gz", None)
    simulate(small, tmp_path / "b.jsonl.gz", None)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    with gzip.open(tmp_path / "a.jsonl.gz", "rb") as f:
        assert f.read() == (tmp_path / "plain.jsonl").read_bytes()


def test_text_stream_output_matches_file(run):
    _, raw, _, _, _ = run
    out = io.StringIO()
    simulate(SPEC, out, io.StringIO())
    assert out.getvalue().encode() == raw


def test_summary_counts_lines_and_episodes(run):
    summary, _, records, labels, _ = run
    assert summary.lines == len(records) == 2 * summary.calls
    assert summary.benign_calls + summary.attack_calls == summary.calls
    assert summary.attack_calls == sum(len(label["request_ids"]) for label in labels)
    assert sum(summary.episodes.values()) == len(labels)
    assert summary.first_time >= SPEC.start
    assert (summary.last_time - SPEC.start).days < SPEC.days + 1


def test_lines_are_time_ordered(run):
    _, _, records, _, _ = run
    times = [_ns(r["time"]) for r in records]
    assert all(a <= b for a, b in zip(times, times[1:]))
    start = int(SPEC.start.timestamp()) * 1_000_000_000
    assert start <= times[0] and times[-1] < start + (SPEC.days * 86400 + 1) * 1_000_000_000


def test_every_request_has_one_later_response_with_the_same_id(run):
    _, _, records, _, _ = run
    seen: dict[str, dict] = {}
    for r in records:
        rid = r["request"]["id"]
        if r["type"] == "request":
            assert rid not in seen
            seen[rid] = r
        else:
            req = seen.pop(rid)  # KeyError: response without an earlier request
            assert r["request"] == req["request"] and r["auth"] == req["auth"]
            delay = _ns(r["time"]) - _ns(req["time"])
            assert 1_000_000 <= delay <= 50_000_000
    assert not seen


def test_entries_follow_the_vault_format(run):
    _, _, records, _, _ = run
    for r in records:
        req = r["request"]
        assert len(req["id"]) == 36 and req["id"][14] == "4"
        assert req["namespace"] == {"id": "root"}
        assert r["time"].endswith("Z")
        auth = r["auth"]
        if auth == {"token_type": "default"}:
            assert req["path"].startswith("auth/")
        else:
            assert auth["accessor"].startswith("hmac-sha256:")
            assert auth["client_token"].startswith("hmac-sha256:")
            assert ("entity_id" in auth) != (auth["display_name"] == "root")
        if r["type"] == "response":
            err = r.get("error")
            assert err in (None, "1 error occurred:\n\t* permission denied\n\n",
                           "1 error occurred:\n\t* invalid credentials\n\n")
            if req["path"].startswith("auth/") and "login" in req["path"] and err is None:
                assert r["response"]["auth"]["entity_id"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_no_plaintext_values_in_data(run):
    _, _, records, _, _ = run
    checked = 0
    for r in records:
        for data in (r["request"].get("data"), r.get("response", {}).get("data")):
            for s in _strings(data):
                assert s.startswith("hmac-sha256:") and len(s) == 12 + 64, s
                checked += 1
    assert checked > 1000


def test_labelled_ids_exist_and_are_disjoint(run):
    _, _, records, labels, _ = run
    ids = {r["request"]["id"] for r in records}
    labelled = [rid for label in labels for rid in label["request_ids"]]
    assert len(labelled) == len(set(labelled))
    assert set(labelled) <= ids
    names = [label["episode"] for label in labels]
    assert names == [f"ep-{k:04d}" for k in range(1, len(labels) + 1)]


def test_each_class_appears_at_least_twice_after_day_two(run):
    _, _, _, labels, _ = run
    counts = {cls: 0 for cls in ATTACKS}
    for label in labels:
        counts[label["class"]] += 1
        assert _ns(label["start"]) >= int(SPEC.start.timestamp() + 2 * 86400) * 1_000_000_000
        assert _ns(label["start"]) <= _ns(label["end"])
    assert set(counts) == {
        "root_token_use", "audit_device_tampering", "policy_change_then_reads",
        "enumeration_denied_burst", "bruteforce_login", "stolen_token_new_network",
        "offhours_bulk_read", "slow_lateral_reads", "dormant_reactivated",
        "dynamic_credential_harvest"}
    assert min(counts.values()) >= 2


def test_default_spec_has_about_three_episodes_of_every_class(run):
    summary = run[0]
    assert set(summary.episodes) == set(ATTACKS) and len(ATTACKS) == 10
    assert all(n == 3 for n in summary.episodes.values())


def test_attack_only_signals_are_all_labelled(run):
    """Root tokens, outside addresses, audit device changes and non-SRE policy writes never occur
    in benign traffic, so every such call must belong to an episode."""
    _, _, records, labels, _ = run
    labelled = {rid for label in labels for rid in label["request_ids"]}
    for r in records:
        req, auth = r["request"], r["auth"]
        attack_only = (
            auth.get("display_name") == "root"
            or req["remote_address"].startswith(UNKNOWN_PREFIXES)
            or (req["path"].startswith("sys/audit/") and req["operation"] != "read")
            or (req["path"].startswith("sys/policies/acl/")
                and "sre-read-all" not in auth.get("policies", ()))
        )
        if attack_only:
            assert req["id"] in labelled, req


def test_episodes_have_the_shape_of_their_class(run):
    _, _, records, labels, _ = run
    calls = {r["request"]["id"]: r for r in records if r["type"] == "response"}
    for label in labels:
        eps = [calls[rid] for rid in label["request_ids"]]
        cls = label["class"]
        paths = [e["request"]["path"] for e in eps]
        errors = [e.get("error") for e in eps]
        if cls == "root_token_use":
            assert 1 <= len(eps) <= 3
            assert all(e["auth"]["policies"] == ["root"] for e in eps)
        elif cls == "audit_device_tampering":
            assert any(p.startswith("sys/audit/") for p in paths)
        elif cls == "policy_change_then_reads":
            assert paths[0].startswith("sys/policies/acl/")
            assert eps[0]["request"]["operation"] == "update"
            assert 5 <= len(eps) - 1 <= 15
        elif cls == "enumeration_denied_burst":
            assert 30 <= len(eps) <= 80
            assert sum(err is not None for err in errors) > len(eps) / 2
        elif cls == "bruteforce_login":
            failed = [e for e in eps if e.get("error", "").endswith("invalid credentials\n\n")]
            assert 15 <= len(failed) <= 40
            assert len({e["request"]["remote_address"] for e in eps}) == 1
        elif cls == "stolen_token_new_network":
            assert 5 <= len(eps) <= 30
            assert all(e["request"]["remote_address"].startswith("203.0.113.") for e in eps)
            assert len({e["auth"]["entity_id"] for e in eps}) == 1
        elif cls == "offhours_bulk_read":
            reads = {p for p in paths if p.startswith("secret/data/")}
            assert 40 <= len(reads) <= 150
        assert label["identity_hint"]


def test_no_attacks_means_no_labels(tmp_path):
    labels = tmp_path / "labels.jsonl"
    summary = simulate(SimulationSpec(days=2, attacks=False, target_calls=5_000),
                       tmp_path / "a.jsonl", labels)
    assert summary.attack_calls == 0 and summary.episodes == {}
    assert labels.read_bytes() == b""


@pytest.mark.parametrize("days,target", [(7, 25_000), (2, 60_000), (1, 8_000)])
def test_target_calls_is_met_within_15_percent(run, days, target):
    if (days, target) == (SPEC.days, SPEC.target_calls):
        summary = run[0]
    else:
        summary = simulate(SimulationSpec(days=days, target_calls=target), io.StringIO(), None)
    assert abs(summary.calls - target) <= 0.15 * target


# ---------------------------------------------------------------------------------------------
# The three later classes, the traps and the change-window feed


def _entity(r: dict) -> str | None:
    """The caller's entity; a login carries it in its response."""
    return r["auth"].get("entity_id") or ((r.get("response") or {}).get("auth") or {}).get(
        "entity_id")


def _responses(records):
    return [r for r in records if r["type"] == "response"]


def _episodes(run, cls):
    _, _, records, labels, _ = run
    calls = {r["request"]["id"]: r for r in _responses(records)}
    found = [(label, [calls[rid] for rid in label["request_ids"]])
             for label in labels if label["class"] == cls]
    assert len(found) >= 2
    return found


def _benign(run):
    _, _, records, labels, _ = run
    labelled = {rid for label in labels for rid in label["request_ids"]}
    return [r for r in _responses(records) if r["request"]["id"] not in labelled]


def _team(policies) -> str:
    """``<team>-read``, ``<team>-staging-read`` or ``<team>-dev`` -> team."""
    return policies[-1].removesuffix("-read").removesuffix("-staging").removesuffix("-dev")


def test_credential_harvest_is_many_database_reads_within_minutes(run):
    for _, eps in _episodes(run, "dynamic_credential_harvest"):
        paths = [e["request"]["path"] for e in eps]
        assert all(p.startswith("database/creds/") for p in paths)
        assert 30 <= len(eps) <= 120 and len(set(paths)) >= 3
        times = [_ns(e["time"]) for e in eps]
        assert max(times) - min(times) <= 15 * 60 * NS
        assert len({_entity(e) for e in eps}) == 1
        for e in eps:
            assert e["request"]["mount_type"] == "database" and "error" not in e
            lease = e["response"]["secret"]
            assert lease["lease_id"].startswith(e["request"]["path"] + "/")
            assert lease["lease_duration"] > 0
            assert set(e["response"]["data"]) == {"username", "password"}


def test_benign_services_fetch_dynamic_credentials_periodically(run):
    reads: dict[str, list[int]] = {}
    for r in _benign(run):
        if r["request"]["path"].startswith("database/creds/"):
            assert r["request"]["path"] == f"database/creds/{_team(r['auth']['policies'])}-app"
            reads.setdefault(r["request"]["remote_address"], []).append(_ns(r["time"]))
    assert len(reads) >= 5
    # one pod: again and again, hours apart, not in bursts
    pod = max(reads.values(), key=len)
    assert len(pod) >= 5 and min(b - a for a, b in zip(pod, pod[1:])) >= HOUR


def test_dormant_identity_is_reactivated_from_an_unknown_network(run):
    benign = _benign(run)
    for label, eps in _episodes(run, "dormant_reactivated"):
        entity = {_entity(e) for e in eps}.pop()
        begin = _ns(label["start"])
        before = [_ns(r["time"]) for r in benign if _entity(r) == entity and _ns(r["time"]) < begin]
        assert before and min(before) < START + 2 * DAY  # active at the start of the log
        assert begin - max(before) >= 3 * DAY  # then silent for at least three days
        assert all(e["request"]["remote_address"].startswith(UNKNOWN_PREFIXES) for e in eps)
        assert "login" in eps[0]["request"]["path"]
        assert any(e["request"]["path"].startswith("secret/data/") for e in eps)
        assert not any(e["request"]["headers"]["user-agent"][0].startswith("vault-agent")
                       for e in eps)


def test_slow_lateral_reads_look_usual_but_for_the_secrets(run):
    benign = _benign(run)
    for label, eps in _episodes(run, "slow_lateral_reads"):
        entity = {_entity(e) for e in eps}.pop()
        policies = eps[0]["auth"]["policies"]
        paths = [e["request"]["path"] for e in eps]
        times = [_ns(e["time"]) for e in eps]
        assert 6 <= len(eps) <= 20 and HOUR <= max(times) - min(times) <= 4 * HOUR + NS
        assert all(p.startswith("secret/data/") and p.split("/")[2] != _team(policies)
                   for p in paths)
        assert not any("error" in e for e in eps)  # an over-broad policy: the reads succeed
        begin = _ns(label["start"])
        history = [r for r in benign if _entity(r) == entity and _ns(r["time"]) < begin]
        segments = {r["request"]["remote_address"].rsplit(".", 2)[0] for r in history}
        agents = {r["request"].get("headers", {}).get("user-agent", [None])[0] for r in history}
        for e in eps:
            assert e["request"]["remote_address"].rsplit(".", 2)[0] in segments
            assert e["request"]["headers"]["user-agent"][0] in agents
        # the identity has peers, and neither it nor they ever read these secrets before
        peers = {_entity(r) for r in benign if r["auth"].get("policies") == policies} - {entity}
        assert peers
        group = peers | {entity}
        assert not {r["request"]["path"] for r in benign
                    if _entity(r) in group and _ns(r["time"]) < begin} & set(paths)


def test_weekly_rotation_writes_many_secrets_quickly_inside_its_window(run):
    _, _, _, _, d = run
    writes = sorted((_ns(r["time"]), r["request"]["path"]) for r in _benign(run)
                    if "secret-rotator" in r["auth"].get("policies", ())
                    and r["request"]["operation"] == "update")
    assert writes
    windows = [orjson.loads(line) for line in (d / "windows.jsonl").read_bytes().splitlines()]
    rotations = [w for w in windows if w["kind"] == "rotation"]
    assert len(rotations) == 1  # once a week
    lo, hi = _ns(rotations[0]["start"]), _ns(rotations[0]["end"])
    assert rotations[0]["policies"] == ["secret-rotator"]
    run_ = [(t, p) for t, p in writes if lo <= t <= hi]
    assert len({p for _, p in run_}) >= 40
    assert run_[-1][0] - run_[0][0] <= 20 * 60 * NS
    assert len({p.split("/")[2] for _, p in run_}) >= 5  # across teams
    # the daily canary rotation outside the window gives the rotator a history
    assert 0 < len(writes) - len(run_) <= 3 * SPEC.days


def test_deploy_windows_cover_the_pods_logins(run):
    _, _, records, _, d = run
    windows = [orjson.loads(line) for line in (d / "windows.jsonl").read_bytes().splitlines()]
    deploys = [w for w in windows if w["kind"] == "deploy"]
    assert len(deploys) >= 10
    logins: dict[str, list[int]] = {}
    for r in _responses(records):
        if r["request"]["path"] == "auth/kubernetes/login" and "error" not in r:
            logins.setdefault(r["response"]["auth"]["display_name"], []).append(_ns(r["time"]))
    sizes = []
    for w in deploys:
        (name,) = w["display_names"]
        inside = [t for t in logins.get(name, ()) if _ns(w["start"]) <= t <= _ns(w["end"])]
        assert inside, w
        sizes.append(len(inside))
        assert w["start"] < w["end"] and w["note"]
    assert max(sizes) >= 5  # some deploys are bursts of 5-10 pods


def test_windows_file_is_deterministic(run, tmp_path):
    _, _, _, _, d = run
    simulate(SPEC, io.StringIO(), None, tmp_path / "windows.jsonl")
    assert (tmp_path / "windows.jsonl").read_bytes() == (d / "windows.jsonl").read_bytes()
    lines = (d / "windows.jsonl").read_bytes().splitlines()
    starts = [orjson.loads(line)["start"] for line in lines]
    assert starts == sorted(starts)


def test_joiners_start_on_day_two_or_later_beside_peers(run):
    world = World(SPEC)
    joiners = world.new_services + world.new_humans
    assert world.new_services and world.new_humans
    first: dict[str, int] = {}
    policies: dict[str, tuple] = {}
    for r in _benign(run):
        e = _entity(r)
        first.setdefault(e, _ns(r["time"]))
        if r["auth"].get("policies"):
            policies.setdefault(e, tuple(r["auth"]["policies"]))
    seen = 0
    for j in joiners:
        if j.actor.entity_id not in first:
            continue  # joined too late in the week to show up
        seen += 1
        assert first[j.actor.entity_id] >= START + 2 * DAY
        peers = [e for e, p in policies.items()
                 if p == j.actor.policies and first[e] < START + DAY and e != j.actor.entity_id]
        assert peers, j.actor.display_name
    assert seen >= len(joiners) - 1


def test_lease_ids_are_the_only_clear_strings_in_responses(run):
    _, _, records, _, _ = run
    for r in _responses(records):
        secret = r["response"].get("secret")
        if secret is not None:
            assert set(secret) == {"lease_id", "lease_duration", "renewable"}
            assert secret["lease_id"].startswith("database/creds/")


def test_cli_and_module_write_the_windows_beside_the_log(tmp_path):
    from typer.testing import CliRunner

    from secretscope.cli import app

    log = tmp_path / "fleet.log.gz"
    result = CliRunner().invoke(app, ["simulate", str(log), "--days", "3", "--calls", "4000"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fleet.log.labels.jsonl").is_file()
    windows = (tmp_path / "fleet.log.windows.jsonl").read_bytes()
    assert windows and all(orjson.loads(line)["kind"] in ("rotation", "deploy")
                           for line in windows.splitlines())
    assert main(["--out", str(tmp_path / "m.jsonl"), "--days", "3", "--target-calls", "4000",
                 "--windows", str(tmp_path / "m.windows.jsonl")]) == 0
    assert (tmp_path / "m.windows.jsonl").read_bytes() == windows
