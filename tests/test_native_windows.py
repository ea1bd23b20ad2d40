"""The compiled windows (``secretscope._native``) against ``secretscope.windows``, the Python
reference they replace on the hot path: the same counts, the same kept entries and the same
snapshot state for any sequence of calls, late, gapped and out-of-range event times included;
and an identity's whole window update against the Python code it replaces, event by event."""

from __future__ import annotations

import math
import tracemalloc
import uuid

import pytest
from hypothesis import example, given, settings, strategies as st

from secretscope import _native
from secretscope import features, identity
from secretscope.windows import Distinct, Recent, RecentEvents, WindowCounter

# Times near bucket edges (where float floor division and floor(x / w) part), far from 1970
# both ways, and ordinary ones.
EDGES = st.sampled_from([0.0, 59.99999999999999, 60.0, 60.00000000000001, 899.9999999999999,
                         -0.5, -60.0, -1e-300, 1e-300, 1.7e9, 1.7e9 + 59.999999, 2**31 * 60.0,
                         2**31 * 900.0 + 0.5, 253402300799.0, -62135596800.0])
TIMES = st.one_of(st.floats(0, 20_000), st.floats(-1e4, 1e4), EDGES,
                  st.floats(1.7e9, 1.7e9 + 200_000))


def test_the_native_constants_are_the_features_own():
    assert tuple(_native.NON_SECRET_PREFIXES) == features._NON_SECRET_PREFIXES
    assert tuple(_native.POLICY_PREFIXES) == features._POLICY_PREFIXES
    assert (_native.RECENT, _native.NEVER) == (identity.RECENT, identity.NEVER)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(60, 60), (900, 96), (60, 3)]),
       st.lists(st.tuples(st.sampled_from(["add", "add_count", "count"]), TIMES), max_size=80))
@example((60, 60), [("add", 2**31 * 60.0), ("add", 60.0), ("count", 2**31 * 60.0 + 60)])
def test_window_counter_matches_the_reference(shape, steps):
    native, reference = _native.WindowCounter(*shape), WindowCounter(*shape)
    for i, (op, ts) in enumerate(steps):
        assert getattr(native, op)(ts) == getattr(reference, op)(ts), (i, op, ts)
        assert _plain(native.to_state()) == _plain(reference.to_state())
    restored, restored_reference = _native.WindowCounter(*shape), WindowCounter(*shape)
    restored.load_state(_plain(reference.to_state()))  # a snapshot holds lists
    restored_reference.load_state(_plain(reference.to_state()))
    assert _plain(restored.to_state()) == _plain(restored_reference.to_state())
    for ts in (3000.0, 1.7e9):
        assert restored.add_count(ts) == restored_reference.add_count(ts)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(60, 60), (900, 96), (60, 3)]), st.integers(1, 5),
       st.lists(st.tuples(st.sampled_from(["add", "add_count", "count"]), st.floats(0, 20_000)),
                max_size=80))
def test_window_counter_matches_the_reference_as_its_base_moves(shape, rebase, steps):
    """Buckets are kept as offsets from a base that moves with the window (every 2**30
    buckets; here every few)."""
    before = _native._set_rebase(rebase)
    try:
        native, reference = _native.WindowCounter(*shape), WindowCounter(*shape)
        for op, ts in steps:
            assert getattr(native, op)(ts) == getattr(reference, op)(ts)
            assert _plain(native.to_state()) == _plain(reference.to_state())
    finally:
        _native._set_rebase(before)


def test_a_window_counter_refuses_a_snapshot_it_cannot_hold():
    window = _native.WindowCounter(60, 60)
    for state in ([[5, 1], 1, 2**40, 2**40], [[1, 2**33], 1, 1, 1], [[1], 1, 1, 1]):
        with pytest.raises(ValueError):
            window.load_state(state)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(300.0, 256, True), (60.0, 4, False), (600.0, 3, True)]),
       st.lists(st.tuples(st.sampled_from(["add", "add_count", "count"]), TIMES,
                          st.sampled_from(["ev-1", "e2", ""])), max_size=80))
def test_recent_matches_the_reference(shape, steps):
    native, reference = _native.Recent(*shape), Recent(*shape)
    for op, ts, eid in steps:
        args = (ts,) if op == "count" else (ts, eid)
        assert getattr(native, op)(*args) == getattr(reference, op)(*args)
        assert native.items == reference.items
        assert _plain(native.to_state()) == _plain(reference.to_state())
    restored = _native.Recent(*shape)
    restored.load_state([list(x) if x is not None else None for x in reference.to_state()])
    assert restored.items == reference.items


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), TIMES), max_size=150))
@example([(True, k, float(k)) for k in range(20)] + [(True, 3, 30.0), (False, 0, 3620.0)])
def test_distinct_matches_the_reference(steps):
    """Past the 16 keys where the reference becomes an OrderedDict and back; keys equal in value
    but different objects are one key."""
    native, reference = _native.Distinct(3600.0), Distinct(3600.0)
    for i, (add, key, ts) in enumerate(steps):
        if add:
            name = f"s{key}"
            assert native.add(name.encode().decode(), ts) == reference.add(name, ts)
        else:
            assert native.count(ts) == reference.count(ts)
        assert native.items() == list(reference.last.items())
        if i == len(steps) // 2:
            native.load([list(kv) for kv in reference.last.items()])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.uuids().map(str), st.sampled_from(
    ["ABCDEF01-0000-0000-0000-000000000000", "sha256:0f3a", "ev-9", "",
     "0000000-00000-0000-0000-000000000000", "g0000000-0000-0000-0000-000000000000"])),
    max_size=120), st.sampled_from([3, 64]))
def test_recent_events_match_the_reference(ids, maxlen):
    native, reference = _native.RecentEvents(maxlen), RecentEvents(maxlen)
    for i, eid in enumerate(ids):
        native.append(float(i), eid)
        reference.append(float(i), eid)
        assert len(native) == len(reference)
        assert native.items() == list(reference)


def _networks_in_a_dict(seen: dict, net: str, ts: float) -> int:
    """How many networks an identity used within 15 minutes of a call (0: none other in the
    last hour), as a plain dict of network -> last time: the reference the windows match."""
    if seen.get(net) is None or ts > seen[net]:
        seen[net] = ts
    if len(seen) == 1:
        return 0
    for old in [k for k, t in seen.items() if t < ts - _native.ALONE]:
        del seen[old]
    if len(seen) == 1:
        return 0
    return sum(1 for t in seen.values() if t >= ts - _native.CONCURRENT) or 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 20_000)), max_size=40))
def test_networks_count_as_the_dict_did(calls):
    win, seen = _native.IdentityWindows(), {}
    for net, ts in calls:  # late calls too
        assert win._network(net.encode().decode(), ts) == _networks_in_a_dict(seen, net, ts)
        assert win.networks() == seen
        assert list(win.networks()) == list(seen)  # in the order first seen


class ReferenceWindows:
    """``FeatureExtractor.observe_windows`` as it was in Python, over ``secretscope.windows``:
    the reference of ``IdentityWindows.observe``."""

    def __init__(self) -> None:
        self.requests_1m = Recent(60.0, maxlen=100_000)
        self.requests_1h, self.requests_24h = WindowCounter(60, 60), WindowCounter(900, 96)
        self.denied_1h, self.lists_1h, self.reads_1h = (WindowCounter(60, 60) for _ in "abc")
        self.denied_5m, self.login_failed_5m = Recent(300.0, ids=True), Recent(300.0, ids=True)
        self.lists_10m, self.creds_10m = Recent(600.0), Recent(600.0, maxlen=10_000)
        self.secrets_1h, self.secrets_24h = Distinct(3600.0), Distinct(86400.0)
        self.denied_secrets_1h = Distinct(3600.0)
        self.marks = [-1e18] * 4
        self.recent = RecentEvents(64)
        self.newest_ts = -math.inf
        self.networks: dict[str, float] = {}

    def observe(self, ts, eid, op, outcome, path, secret, is_login, network) -> tuple:
        self.recent.append(ts, eid)
        since_previous = max(0.0, ts - self.newest_ts)
        self.newest_ts = max(self.newest_ts, ts)
        networks = _networks_in_a_dict(self.networks, network, ts)
        requests_1m = self.requests_1m.add_count(ts)
        requests_1h = self.requests_1h.add_count(ts)
        requests_24h = self.requests_24h.add_count(ts)
        secret_access = op != "help" and not path.startswith(features._NON_SECRET_PREFIXES)
        if outcome == "denied":
            self.denied_1h.add(ts)
            if secret_access:
                self.denied_secrets_1h.add(secret, ts)
            if self.denied_5m.add_count(ts, eid) >= 5:
                self.marks[2] = ts
        if is_login and outcome != "success":
            if self.login_failed_5m.add_count(ts, eid) >= 5:
                self.marks[2] = ts
        if op == "list":
            self.lists_1h.add(ts)
            if self.lists_10m.add_count(ts) >= 3:
                self.marks[0] = ts
        if op == "read" and outcome == "success":
            self.reads_1h.add(ts)
        if secret_access:
            d1h, d24h = self.secrets_1h.add(secret, ts), self.secrets_24h.add(secret, ts)
            if "/creds/" in path or "/issue/" in path:
                self.creds_10m.add(ts)
        else:
            d1h, d24h = self.secrets_1h.count(ts), self.secrets_24h.count(ts)
            if outcome == "success":
                if op in ("create", "update", "delete") and path.startswith(
                        features._POLICY_PREFIXES):
                    self.marks[1] = ts
                elif path.startswith("auth/token/create"):
                    self.marks[3] = ts
        lists = self.lists_1h.count(ts)
        return (secret_access, float(requests_1m), float(requests_1h), float(requests_24h),
                float(d1h), float(d24h), float(self.denied_5m.count(ts)),
                self.denied_1h.count(ts) / requests_1h if requests_1h else 0.0,
                float(self.denied_secrets_1h.count(ts)), float(self.login_failed_5m.count(ts)),
                lists / max(1, self.reads_1h.count(ts)) if lists else 0.0,
                float(self.creds_10m.count(ts)), *(ts - m for m in self.marks), since_previous,
                float(networks or 1),
                tuple(sorted(k for k, t in self.networks.items() if t >= ts - 900.0))
                if networks > 1 else (), networks == 0)


CALLS = st.tuples(
    st.sampled_from(["read", "list", "create", "update", "delete", "help"]),
    st.sampled_from(["success", "denied", "failed"]),
    st.sampled_from(["secret/data/a", "secret/data/b", "db/creds/ro", "pki/issue/web",
                     "sys/policies/acl/ops", "sys/policy/x", "auth/token/create",
                     "auth/approle/login", "identity/entity", "cubbyhole/x", "kv/é/ü",
                     "kv/\ud800/x"]),
    st.booleans(),
    st.sampled_from(["corp-vpn", "k8s-prod", "unknown:198.51", "unknown:2001:db8",
                     "unknown:\udcff", "unknown:\U0001f600"]),
    st.one_of(st.floats(0, 4000), EDGES))


@settings(max_examples=300, deadline=None)
@given(st.lists(CALLS, max_size=120))
def test_an_identity_s_windows_match_the_python_observe(calls):
    """Bursts of denials, failed logins and lists, credentials, policy writes, token creation,
    networks, late and duplicate times; then a snapshot's round trip."""
    native, reference = _native.IdentityWindows(), ReferenceWindows()
    for i, (op, outcome, path, is_login, network, offset) in enumerate(calls):
        ts = 1.7e9 + offset if abs(offset) < 1e5 else offset
        eid = str(uuid.UUID(int=i)) if i % 3 else f"ev-{i}"
        secret = path.replace("/data/", "/")
        got = native.observe(ts, eid, op, outcome, path, secret, is_login, network, True)
        assert got == reference.observe(ts, eid, op, outcome, path, secret, is_login, network)
        assert native.newest_ts == reference.newest_ts
        assert native.recent_items() == list(reference.recent)
        assert native.denied_items() == reference.denied_5m.items
        assert native.failed_items() == reference.login_failed_5m.items
    if any(offset < -1e5 for *_, offset in calls):
        return  # a counter emptied before 1970 loads unstarted, as in Python: no round trip
    state = native.to_state()
    copy = _native.IdentityWindows.from_state(*_plain(state))
    assert _plain(copy.to_state()) == _plain(state)
    if calls:
        op, outcome, path, is_login, network, _ = calls[-1]
        args = (1.7e9 + 3000.5, "ev-next", op, outcome, path, path, is_login, network, True)
        assert copy.observe(*args) == native.observe(*args)


def _plain(state):
    """Lists for tuples, as a snapshot's msgpack round trip gives them."""
    if isinstance(state, (list, tuple)):
        return [_plain(x) for x in state]
    if isinstance(state, dict):
        return {k: _plain(v) for k, v in state.items()}
    return state


def test_tracemalloc_sees_the_native_windows():
    """Their memory is counted where Python's is (benchmarks/identity_memory.py relies on it):
    every allocation goes through Python's raw allocator."""
    tracemalloc.start()
    try:
        before, held_before = tracemalloc.get_traced_memory()[0], _native.allocated()
        windows = [_native.IdentityWindows() for _ in range(2_000)]
        for k, w in enumerate(windows):
            for i in range(10):
                w.observe(1.7e9 + 900.0 * i, str(uuid.UUID(int=k * 10 + i)), "read", "success",
                          "secret/data/a", f"secret/a{i}", False, "corp-vpn", True)
        native = _native.allocated() - held_before
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert native > 2_000 * 400  # the windows' own buffers: recent events alone are 240 B
    assert traced >= native
    del windows


def test_an_identity_that_lists_but_is_never_denied_holds_no_denial_windows():
    """Lists are routine, denials and failed logins rare: the windows of each are allocated
    apart, on the first event that needs them."""
    def held(denied: bool) -> float:
        before = _native.allocated()
        windows = [_native.IdentityWindows() for _ in range(1_000)]
        for k, w in enumerate(windows):
            for i in range(10):
                outcome = "denied" if denied and i == 9 else "success"
                w.observe(1.7e9 + 900.0 * i, str(uuid.UUID(int=k * 10 + i)),
                          "list" if i % 3 == 0 else "read", outcome, "secret/data/a",
                          f"secret/a{i}", False, "corp-vpn", True)
        per = (_native.allocated() - before) / len(windows)
        del windows
        return per

    listing, denied = held(False), held(True)
    assert denied > listing + 100, (listing, denied)  # the denial windows: over 100 B
