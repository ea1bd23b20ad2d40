"""Per-identity state: idle identities expire to a summary that still makes their return a
dormant one, and the compact windows count exactly as the ring of buckets they replace."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import uuid
from collections import OrderedDict
from datetime import timedelta

import pytest
from hypothesis import example, given, settings, strategies as st

from secretscope.config import DEFAULT_CONFIG
from secretscope.features import FeatureExtractor
from secretscope.models.rules import RuleSet, load_rules
from secretscope.segments import SegmentTable
from secretscope.windows import RecentEvents, WindowCounter

from conftest import ROOT
from helpers import T0, every, learn_all, make_event

RULES = RuleSet(load_rules(DEFAULT_CONFIG.parent / "rules"))
SEGMENTS = SegmentTable([("corp-vpn", "172.16.0.0/16"), ("k8s-prod", "10.20.0.0/16")])
PERSON = dict(identity="entity:alice", display_name="alice", auth_method="oidc",
              policies=("default", "payments-dev"), user_agent="Mozilla/5.0 Firefox/128.0")
DORMANT_RULE = "vault-dormant-identity-reactivated"


def fired(fv) -> set[str]:
    return {r.id for r in RULES.evaluate_one(fv)}


def history_then_return(fx: FeatureExtractor, away_days: int):
    """Alice works three days from the VPN; a service keeps event time moving while she is away;
    then a call in her name comes from an unlisted address with curl. Returns (the return's
    feature vector, whether alice's state was expired just before it, her summary's history)."""
    learn_all(fx, [make_event(at=t, remote_address=f"172.16.{i % 200}.7",
                              path=f"secret/data/payments/s{i % 6}", **PERSON)
                   for d in range(3)
                   for i, t in enumerate(every(T0 + timedelta(days=d), timedelta(minutes=5), 90))])
    learn_all(fx, [make_event(at=t, identity="entity:svc", remote_address="10.20.1.5")
                   for t in every(T0 + timedelta(days=3), timedelta(hours=6), 4 * away_days)])
    summary = fx.dormant.get("entity:alice")
    expired = "entity:alice" not in fx.identities and summary is not None
    back = T0 + timedelta(days=3 + away_days, hours=10)
    stolen = fx.observe(make_event(at=back, remote_address="198.51.100.3",
                                   **{**PERSON, "user_agent": "curl/8.5.0"}))
    return stolen, expired, summary.history if summary is not None else None


def test_an_identity_back_after_40_days_was_expired_and_is_still_dormant():
    expiring = FeatureExtractor(SEGMENTS, idle_days=30)
    stolen, expired, history = history_then_return(expiring, away_days=40)
    assert expired and history == 270  # state gone, summary kept with its history
    assert "entity:alice" in expiring.identities and "entity:alice" not in expiring.dormant
    assert stolen["idle_days"] > 40 and stolen["history_events"] == 270
    # what the dormancy logic raises when nothing expires
    keeping = FeatureExtractor(SEGMENTS, idle_days=1000)
    kept, expired_there, _ = history_then_return(keeping, away_days=40)
    assert not expired_there
    assert DORMANT_RULE in fired(kept)
    assert fired(stolen) == fired(kept)
    for name in ("idle_days", "network_unfamiliar", "history_events", "user_agent_freq_class",
                 "segment_freq_class", "novelty_score"):
        assert stolen[name] == kept[name], name


def test_an_identity_back_within_idle_days_keeps_its_whole_state():
    fx = FeatureExtractor(SEGMENTS, idle_days=30)
    stolen, expired, _ = history_then_return(fx, away_days=20)
    assert not expired and not fx.dormant
    assert DORMANT_RULE in fired(stolen)


class RingCounter:
    """The ring of buckets WindowCounter replaced, kept here as the reference it must match."""

    def __init__(self, width: int, n: int) -> None:
        self.width, self.n = width, n
        self.counts, self.ids, self.total, self.newest = [0] * n, [-1] * n, 0, -1

    def _advance(self, bucket: int) -> None:
        if bucket <= self.newest:
            return
        if bucket - self.newest >= self.n:
            self.counts, self.ids, self.total = [0] * self.n, [-1] * self.n, 0
            self.ids[bucket % self.n] = bucket
        else:
            for b in range(self.newest + 1, bucket + 1):
                self.total -= self.counts[b % self.n]
                self.counts[b % self.n], self.ids[b % self.n] = 0, b
        self.newest = bucket

    def add(self, ts: float) -> None:
        bucket = int(ts // self.width)
        self._advance(bucket)
        if self.ids[bucket % self.n] == bucket:
            self.counts[bucket % self.n] += 1
            self.total += 1

    def count(self, ts: float) -> int:
        if self.total:
            self._advance(int(ts // self.width))
        return self.total


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(-4000, 9000)), max_size=80),
       start=st.sampled_from([1_772_442_000.0, 0.0, 1500.0,
                              60.0 * 2**31 - 3000.0]))  # buckets crossing 32 bits
@example(steps=[(True, 0), (True, 3600), (True, -30)], start=1_772_442_000.0)  # a gap of n
def test_window_counter_counts_as_the_ring_did_with_late_and_gapped_events(steps, start):
    compact, hot, ring = WindowCounter(60, 60), WindowCounter(60, 60), RingCounter(60, 60)
    now = start
    for add, delta in steps:
        now = max(0.0, now + delta)  # negative: a late event (event time starts at 1970)
        if add:
            compact.add(now)
            ring.add(now)
            assert hot.add_count(now) == ring.count(now)
        else:
            assert hot.count(now) == ring.count(now)
        assert compact.count(now) == ring.count(now)
    restored = WindowCounter(60, 60)
    restored.load_state(compact.to_state())
    assert restored.to_state() == compact.to_state()
    assert restored.count(now + 30) == ring.count(now + 30)


class _DistinctAsAWrapper:
    """windows.Distinct as it was before it became a dict: the reference it must match."""

    def __init__(self, horizon: float) -> None:
        self.horizon, self.last = horizon, {}

    def add(self, key: str, ts: float) -> int:
        last = self.last
        seen = last.get(key)
        if seen is None:
            last[key] = ts
            if len(last) > 16 and type(last) is dict:
                last = self.last = OrderedDict(last)
        elif ts >= seen:
            if type(last) is dict:
                del last[key]
                last[key] = ts
            else:
                last[key] = ts
                last.move_to_end(key)
        while True:
            oldest = next(iter(last))
            if last[oldest] > ts - self.horizon:
                return len(last)
            del last[oldest]

    def count(self, ts: float) -> int:
        last = self.last
        while last and last[next(iter(last))] <= ts - self.horizon:
            del last[next(iter(last))]
        return len(last)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.floats(0, 30_000)),
                max_size=120))
def test_distinct_counts_as_the_wrapper_did(steps):
    """Adds and counts, late times among them, past the 16 keys where an OrderedDict takes over
    and back; after a snapshot's load too."""
    from secretscope.windows import Distinct

    window, reference = Distinct(3600.0), _DistinctAsAWrapper(3600.0)
    for i, (add, key, ts) in enumerate(steps):
        if add:
            assert window.add(f"s{key}", ts) == reference.add(f"s{key}", ts)
        else:
            assert window.count(ts) == reference.count(ts)
        assert list(window.last.items()) == list(reference.last.items())
        if i == len(steps) // 2:
            window.load(list(window.last.items()))
    assert window.big is None or len(window) == 0  # the keys are in one place


def test_recent_events_keep_ids_exactly_whatever_their_form():
    rng = random.Random(4)
    recent = RecentEvents(maxlen=5)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(4)]
    ids = [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in ids]
    ids += ["ABCDEF01-0000-0000-0000-000000000000", "sha256:0f3a", "ev-9"]
    for i, eid in enumerate(ids):
        recent.append(float(i), eid)
    assert list(recent) == [(float(i), eid) for i, eid in enumerate(ids)][-5:]
    assert isinstance(recent.ids, list)  # upper case and derived ids are not packed
    packed = RecentEvents(maxlen=3)
    for i, eid in enumerate(ids[:4]):
        packed.append(float(i), eid)
    assert packed.ids is None and len(packed.data) == 24 * 4  # one buffer, 24 bytes an entry
    assert len(packed) == 3
    assert list(packed) == [(float(i), eid) for i, eid in enumerate(ids[:4])][-3:]
    unfinished = iter(packed)
    next(unfinished)
    many = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(100)]
    for i, eid in enumerate(many):  # appends while an iteration is left unfinished
        packed.append(100.0 + i, eid)
    assert list(packed) == [(100.0 + i, eid) for i, eid in enumerate(many)][-3:]
    assert len(packed.data) <= 24 * (3 + 16)  # older entries are cut


@pytest.mark.slow
def test_the_memory_benchmark_prints_its_figures_and_fails_above_its_limits():
    bench = [sys.executable, str(ROOT / "benchmarks" / "identity_memory.py")]
    run = subprocess.run(bench + ["--calls", "6000", "--max-bytes", "1"], capture_output=True,
                         text=True, timeout=600)
    per = re.search(r"state per tracked identity: ([\d,]+) B \(baseline, same run: one "
                    r"identity after its first call ([\d,]+) B\)", run.stdout)
    assert per, run.stdout + run.stderr
    assert 100 < int(per.group(1).replace(",", "")) < 20_000
    assert run.returncode == 1 and "FAIL" in run.stderr  # 1 byte per identity is missed
    fleet = subprocess.run(bench + ["--fleet", "3000", "--features-only", "--max-rss-gib",
                                    "0.01"], capture_output=True, text=True, timeout=600)
    assert "3,000 tracked" in fleet.stdout and "peak RSS" in fleet.stdout, fleet.stdout
    assert fleet.returncode == 1  # no process fits in 10 MiB: the limit is enforced


def test_a_batch_spanning_more_than_idle_days_expires_its_identities_after_deriving_them():
    """Audit samples from different years replayed in one batch: the row 40 days later must
    not expire the identity of an earlier row before that row is derived (it is expired by a
    look after the batch instead)."""
    from secretscope.config import load_settings
    from secretscope.findings import to_ocsf
    from secretscope.runner import Pipeline

    events = [make_event(at=T0, identity="entity:old"),
              make_event(at=T0 + timedelta(days=40), identity="entity:new"),
              make_event(at=T0 + timedelta(days=40, hours=2), identity="entity:new"),
              make_event(at=T0 + timedelta(days=40, hours=4), identity="entity:new")]
    batched, single = Pipeline(load_settings()), Pipeline(load_settings())
    together = (batched.process_batch(events[:3]) + batched.process_batch(events[3:])
                + batched.finish())
    apart = [f for e in events for f in single.process_batch([e])] + single.finish()
    assert [to_ocsf(f) for f in together] == [to_ocsf(f) for f in apart]
    for p in (batched, single):
        assert "entity:old" in p.extractor.dormant and "entity:old" not in p.extractor.identities
        assert p.extractor.dormant["entity:old"].history == 1


def test_a_snapshot_keeps_dormant_summaries_and_the_sweep_clock():
    from secretscope import snapshot
    from secretscope.config import load_settings
    from secretscope.runner import Pipeline

    events = [make_event(at=t, identity="entity:old", remote_address=f"172.16.{i}.7",
                         path=f"secret/data/payments/s{i % 3}", **{
                             k: v for k, v in PERSON.items() if k != "identity"})
              for i, t in enumerate(every(T0, timedelta(hours=1), 12))]
    events += [make_event(at=T0 + timedelta(days=d), identity="entity:svc")
               for d in range(1, 42)]
    first = Pipeline(load_settings())
    first.process_batch(events[:-1])
    first.process_batch(events[-1:])  # its look for idle identities follows their derive
    assert "entity:old" in first.extractor.dormant
    restored = Pipeline(load_settings())
    snapshot.load(restored, snapshot.dump(first))
    assert restored.extractor.next_sweep == first.extractor.next_sweep
    assert restored.extractor.dormant["entity:old"].to_state() == \
        first.extractor.dormant["entity:old"].to_state()
    back = make_event(at=T0 + timedelta(days=42), identity="entity:old",
                      remote_address="198.51.100.3",
                      **{**{k: v for k, v in PERSON.items() if k != "identity"},
                         "user_agent": "curl/8.5.0"})
    assert restored.extractor.observe(back).values == first.extractor.observe(back).values
