"""The compiled baseline (``secretscope._native.Baseline``) against the Python code it replaced
in ``FeatureExtractor.derive``, ``learn`` and ``unlearn``: the same features to the bit, the
same counts in the same order, and exact reversal, for generated sequences of learns and
unlearns (hour profiles past 255 an hour, values that come and go, many values, rates across
hours, gaps)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from secretscope._native import Baseline
from secretscope.novelty import ENVIRONMENT, PLACE, own_classes, tagged

PRODUCTION = tagged(ENVIRONMENT, "production")
HOD = 168


class ReferenceBaseline:
    """The baseline as IdentityState and features.py kept it in Python."""

    def __init__(self) -> None:
        self.hours = [0] * (HOD + 24)
        self.history = 0
        self.seen: dict[str, int] = {}
        self.distinct = [0] * 10
        self.scalars = [False, 0.0, 0.0, 0.0, 0.0, -1e18]  # writer, first, last, mean, var, login
        self.rates = [-1, 0, 0.0, 0.0, 0, 0.0, 0.0]

    def _count(self, d, key):
        if key in self.seen:
            self.seen[key] += 1
        else:
            self.distinct[d] += 1
            self.seen[key] = 1

    def _uncount(self, d, key):
        left = self.seen[key] - 1
        if left:
            self.seen[key] = left
        else:
            del self.seen[key]
            self.distinct[d] -= 1

    def derive(self, ts, how, hod, tkeys, place):
        history, h = self.history, self.hours
        if history:
            how_share = (h[how - 1 if how else 167] + h[how] + h[(how + 1) % 168]) / history
            day = HOD + hod
            hod_share = (h[day - 1 if hod else HOD + 23] + h[day] + h[HOD + (hod + 1) % 24]) / history
            floor = max(1.0, 0.03 * history)
            work = 0.0
            if h[day] < floor:
                work = 12.0
                for d in range(13):
                    if h[HOD + (hod + d) % 24] >= floor or h[HOD + (hod - d) % 24] >= floor:
                        work = float(d)
                        break
            classes, novelty = own_classes(tkeys, self.seen, self.distinct, history)
            seg_share = self.seen[tkeys[3]] / history if classes[3] < 3 else 0.0
            gap_std = self.scalars[4] ** 0.5
            periodicity = 1.0 / (1.0 + gap_std) if history >= 10 else 0.0
            deviation = (abs(math.log1p(max(0.0, ts - self.scalars[2])) - self.scalars[3])
                         / (gap_std + 0.5)) if history >= 10 else 0.0
        else:
            how_share = hod_share = work = seg_share = periodicity = deviation = 0.0
            classes, novelty = own_classes(tkeys, self.seen, self.distinct, 0)
        return (how_share, hod_share, work, classes, novelty, seg_share, periodicity, deviation,
                bool(history and place not in self.seen),
                bool(self.distinct[ENVIRONMENT] and PRODUCTION not in self.seen),
                float(self.distinct[0]), float(self.distinct[1]), history,
                (ts - self.scalars[1]) / 86400.0 if history else 0.0, self.rates[5],
                self.rates[6], self.scalars[0], self.scalars[5])

    def learn(self, ts, how, hod, tkeys, first, login_ok, place, env, policy_write, r1h, s1h):
        saved = (tuple(self.scalars), tuple(self.rates))
        if login_ok and not self.seen.get(tkeys[3]):
            self.scalars[5] = ts
        self.hours[how] += 1
        self.hours[HOD + hod] += 1
        if place:
            self._count(PLACE, place)
        if env:
            self._count(ENVIRONMENT, env)
        for d, key in enumerate(tkeys):
            if d >= first and key is not None:
                self._count(d, key)
        if policy_write:
            self.scalars[0] = True
        r = self.rates
        hour = int(ts // 3600)
        if hour > r[0]:
            if r[1]:
                r[4] += 1
                alpha = max(0.1, 1.0 / r[4])
                r[5] += alpha * (r[2] / r[1] - r[5])
                r[6] += alpha * (r[3] / r[1] - r[6])
            r[0:4] = [hour, 0, 0.0, 0.0]
        r[1] += 1
        r[2] += r1h
        r[3] += s1h
        if not r[4]:
            r[5], r[6] = r[2] / r[1], r[3] / r[1]
        s = self.scalars
        if self.history:
            gap = math.log1p(max(0.0, ts - s[2]))
            if self.history == 1:
                s[3] = gap
            else:
                diff = gap - s[3]
                s[3] += 0.05 * diff
                s[4] = (1.0 - 0.05) * (s[4] + 0.05 * diff * diff)
        else:
            s[1] = ts
        self.history += 1
        if ts > s[2]:
            s[2] = ts
        return saved

    def unlearn(self, how, hod, tkeys, place, env, saved):
        self.hours[how] -= 1
        self.hours[HOD + hod] -= 1
        if place:
            self._uncount(PLACE, place)
        if env:
            self._uncount(ENVIRONMENT, env)
        for d, key in enumerate(tkeys):
            if key is not None:
                self._uncount(d, key)
        self.scalars, self.rates = list(saved[0]), list(saved[1])
        self.history -= 1

    def state(self):
        return (self.hours[:HOD], self.hours[HOD:], self.history, self.seen, self.distinct,
                self.scalars, self.rates)


VALUES = st.integers(0, 80)  # past the 64 values where an index takes over
STEP = st.tuples(
    st.floats(0, 30 * 86400), st.integers(0, 23), st.integers(0, 6), VALUES, VALUES,
    st.booleans(), st.booleans(), st.sampled_from([None, "corp", "home"]),
    st.sampled_from([None, "production", "staging"]), st.booleans(), st.integers(0, 50),
    st.booleans())


def _event(step):
    offset, hod, day, secret, agent, succeeded, login, place, env, write, r1h, _ = step
    ts = 1.7e9 + offset
    tkeys = tuple(tagged(d, v) for d, v in enumerate(
        (f"kv/s{secret}", f"kv/f{secret % 7}", "read", "corp-vpn" if secret % 3 else "k8s",
         f"10.0.0.{secret}", f"agent{agent}", "oidc", None)))
    return (ts, day * 24 + hod, hod, tkeys, 0 if succeeded else 2, login and succeeded,
            tagged(PLACE, place) if place else None, tagged(ENVIRONMENT, env) if env else None,
            write, float(r1h), float(r1h % 7))


def _plain(x):
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return list(x.items())
    return x


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, max_size=150))
def test_the_baseline_matches_the_python_code(steps):
    """Learns with now and then the newest ones unlearned again, as the runner's redo does;
    derive checked before every step, the whole state after it."""
    native, reference = Baseline(), ReferenceBaseline()
    learned = []
    for step in steps:
        ts, how, hod, tkeys, first, login_ok, place, env, write, r1h, s1h = _event(step)
        probe = tagged(PLACE, "corp")
        assert native.derive(ts, how, hod, tkeys, probe, PRODUCTION) == \
            reference.derive(ts, how, hod, tkeys, probe)  # floats equal: to the bit
        if step[-1] and learned:  # unlearn the newest
            args = learned.pop()
            counted = tuple(k if d >= args[4] else None for d, k in enumerate(args[3]))
            native.unlearn(args[1], args[2], counted, args[6], args[7], args[-1][0])
            reference.unlearn(args[1], args[2], counted, args[6], args[7], args[-1][1])
        else:
            undo = native.learn(ts, how, hod, tkeys, first, login_ok, place, env, write, r1h,
                                s1h)
            saved = reference.learn(ts, how, hod, tkeys, first, login_ok, place, env, write,
                                    r1h, s1h)
            learned.append((ts, how, hod, tkeys, first, login_ok, place, env, (undo, saved)))
        assert _plain(native.to_state()) == _plain(reference.state())
    copy = Baseline.from_state(*native.to_state())
    assert _plain(copy.to_state()) == _plain(native.to_state())


def test_hour_profiles_widen_past_255_and_back_down_exactly():
    native, reference = Baseline(), ReferenceBaseline()
    tkeys = tuple(tagged(d, v) for d, v in enumerate(
        ("kv/a", "kv", "read", "corp", "10.0.0.1", "agent", "oidc", None)))
    undos = []
    for i in range(70_000):  # one hour of the week past 255 and 65,535
        args = (1.7e9 + i, 5, 5, tkeys, 0, False, None, None, False, 1.0, 1.0)
        undos.append((native.learn(*args), reference.learn(*args)))
    assert _plain(native.to_state()) == _plain(reference.state())
    assert native.hours()[5] == 70_000
    for undo, saved in reversed(undos[-300:]):
        native.unlearn(5, 5, tkeys, None, None, undo)
        reference.unlearn(5, 5, tkeys, None, None, saved)
    assert _plain(native.to_state()) == _plain(reference.state())
    assert Baseline().derive(1.7e9, 5, 5, tkeys, tkeys[4], PRODUCTION)[3] == [3] * 7 + [0]


def test_a_baseline_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError):
        Baseline().derive(1.7e9, 168, 0, (), "x", PRODUCTION)
    with pytest.raises(ValueError):
        Baseline.from_state([0] * 10, [0] * 24, 0, {}, [0] * 10, [False, 0, 0, 0, 0, 0],
                            [-1, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError):  # a key per novelty dimension, no more
        Baseline().learn(1.7e9, 0, 0, ("k",) * 11, 0, False, None, None, False, 1.0, 1.0)
    with pytest.raises(KeyError):  # unlearning what was never learned
        Baseline().unlearn(0, 0, ("never",), None, None, ((False, 0.0, 0.0, 0.0, 0.0, -1e18),
                                                          (-1, 0, 0.0, 0.0, 0, 0.0, 0.0)))


def test_an_identity_of_few_hours_keeps_pairs_not_a_profile_of_192():
    """Hour profiles are (hour, count) pairs while few hours hold events: a fleet of identities
    seen a few times each does not pay 192 counts apiece. The hypothesis test above checks the
    values across the change to the dense form; this checks that the sparse form is there."""
    from secretscope._native import allocated

    tkeys = tuple(tagged(d, v) for d, v in enumerate(
        ("kv/a", "kv", "read", "corp", "10.0.0.1", "agent", "oidc", None)))

    def held(hours: int) -> float:
        before = allocated()
        fleet = [Baseline() for _ in range(500)]
        for b in fleet:
            for h in range(hours):  # each event its own hour of the week and of the day
                b.learn(1.7e9 + 3600.0 * h, h, h % 24, tkeys, 0, False, None, None, False,
                        1.0, 1.0)
        per = (allocated() - before) / len(fleet)
        del fleet
        return per

    few, many = held(6), held(40)  # 6 hours: 12 pairs; 40 hours: the profile is dense
    assert few + 150 < many, (few, many)
