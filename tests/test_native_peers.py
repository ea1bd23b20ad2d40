"""The compiled peer group (``secretscope._native.PeerGroup``) against the Python code it
replaced, kept here as the reference: the same counts in the same order after any sequence of
learns and unlearns, and the same peer features to the bit."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings, strategies as st

from secretscope._native import PeerGroup
from secretscope.novelty import FREQUENT, INFREQUENT, PEER_DIMENSIONS, RARE, RARE_SHARE, UNSEEN, \
    INFREQUENT_SHARE


def frequency_classes(keys: tuple, counts: list, total: int) -> tuple[list[int], float]:
    if not total:
        return [FREQUENT if k is None else UNSEEN for k in keys], 1.0
    rare, infrequent = RARE_SHARE * total, INFREQUENT_SHARE * total
    classes: list[int] = []
    novelty = 0.0
    for key, seen in zip(keys, counts):
        n = seen.get(key, 0) if key is not None else total
        if n >= infrequent:
            classes.append(FREQUENT)
        elif n:
            classes.append(INFREQUENT if n >= rare else RARE)
        else:
            classes.append(UNSEEN)
            surprise = 1.0 - len(seen) / total
            if surprise > novelty:
                novelty = surprise
    return classes, novelty


def decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class ReferencePeerGroup:
    """``novelty.PeerGroup`` and the peer part of ``features.derive`` as they were in Python."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.history = 0
        self.counts: list[defaultdict[str, int]] = [defaultdict(int) for _ in PEER_DIMENSIONS]
        self.hod = [0] * 24
        self.members: defaultdict[str, int] = defaultdict(int)
        self.policy_writes = 0

    def learn(self, identity: str, keys: tuple, hod: int, policy_write: bool) -> None:
        self.history += 1
        self.policy_writes += policy_write
        self.hod[hod] += 1
        self.members[identity] += 1
        for counts, d in zip(self.counts, PEER_DIMENSIONS):
            key = keys[d]
            if key is not None:
                counts[key] += 1

    def unlearn(self, identity: str, keys: tuple, hod: int, policy_write: bool) -> None:
        self.history -= 1
        self.policy_writes -= policy_write
        self.hod[hod] -= 1
        decrement(self.members, identity)
        for counts, d in zip(self.counts, PEER_DIMENSIONS):
            key = keys[d]
            if key is not None:
                decrement(counts, key)

    def derive(self, keys: tuple, hod: int) -> tuple:
        p_history = self.history
        classes, novelty = frequency_classes((keys[0], keys[1], keys[3], keys[5]), self.counts,
                                             p_history)
        if p_history:
            p_day = self.hod
            share = (p_day[hod - 1] + p_day[hod] + p_day[(hod + 1) % 24]) / p_history
        else:
            share = 0.0
        return classes, novelty, share, float(len(self.counts[1])), float(len(self.members))

    def state(self) -> list:
        return [self.history, [list(c.items()) for c in self.counts], self.hod,
                list(self.members.items()), self.policy_writes]


def _plain(state: list) -> list:
    history, counts, hod, members, writes = state
    return [history, [list(c.items()) for c in counts], list(hod), list(members.items()),
            writes]


VALUE = st.one_of(st.none(), st.integers(0, 12).map(lambda i: f"v{i}"),
                  st.sampled_from(["", "é/ü", "kv/a/b", "\ud800"]))  # a lone surrogate too
STEP = st.tuples(st.integers(0, 5), st.tuples(*[VALUE] * 8), st.integers(0, 23), st.booleans(),
                 st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=120), st.tuples(*[VALUE] * 8), st.integers(0, 23))
def test_the_peer_group_matches_the_python_code(steps, probe, probe_hod):
    """Learns with now and then the newest unlearned again, as the runner's redo does; the
    whole state and derive compared after every step, derive's floats to the bit."""
    native, reference = PeerGroup("team"), ReferencePeerGroup("team")
    learned = []
    for member, keys, hod, write, undo in steps:
        identity = f"entity:{member}"
        if undo and learned:
            args = learned.pop()
            native.unlearn(*args)
            reference.unlearn(*args)
        else:
            native.learn(identity, keys, hod, write)
            reference.learn(identity, keys, hod, write)
            learned.append((identity, keys, hod, write))
        assert _plain(native.to_state()) == reference.state()
        assert native.derive(keys, hod) == reference.derive(keys, hod)
        assert native.derive(probe, probe_hod) == reference.derive(probe, probe_hod)
        assert (native.history, native.policy_writes) == (reference.history,
                                                          reference.policy_writes)
    assert [native.values(i) for i in range(4)] == [list(c) for c in reference.counts]
    copy = PeerGroup.from_state("team", native.to_state())
    assert _plain(copy.to_state()) == _plain(native.to_state())
    assert copy.derive(probe, probe_hod) == native.derive(probe, probe_hod)
    assert copy.key == "team"


def test_counts_past_32_bits_stay_exact():
    """A group's members together can use one secret more than 2**32 times."""
    keys = ("kv/a", "kv", "read", "corp", None, "agent", None, None)
    big = 2**32 + 5
    native = PeerGroup.from_state("team", [big, [{"kv/a": big}, {"kv": big}, {"corp": big},
                                                 {"agent": big}], [0] * 23 + [big],
                                           {"entity:1": big}, 0])
    native.learn("entity:1", keys, 23, False)
    assert native.to_state()[1][0] == {"kv/a": big + 1}
    assert native.members == {"entity:1": big + 1}
    assert native.derive(keys, 23)[0] == [FREQUENT] * 4


def test_a_peer_group_refuses_what_it_cannot_hold():
    keys = ("kv/a", "kv", "read", "corp", None, "agent", None, None)
    with pytest.raises(ValueError):
        PeerGroup("team").learn("entity:1", keys, 24, False)
    with pytest.raises(ValueError):
        PeerGroup("team").derive(keys, 24)
    with pytest.raises(KeyError):  # unlearning what was never learned
        PeerGroup("team").unlearn("entity:1", keys, 0, False)
    with pytest.raises(ValueError):
        PeerGroup.from_state("team", [0, [{}, {}, {}], [0] * 24, {}, 0])
    with pytest.raises(ValueError):
        PeerGroup("team").values(4)


def test_past_64_values_an_index_takes_over_and_gives_the_same_answers():
    native, reference = PeerGroup("team"), ReferencePeerGroup("team")
    learned = []
    for i in range(300):  # values and members well past the scan's 64, then most taken out
        keys = (f"kv/s{i % 150}", f"kv/f{i % 90}", "read", f"seg{i % 3}", None, f"ua{i % 70}",
                None, None)
        args = (f"entity:{i % 100}", keys, i % 24, i % 17 == 0)
        native.learn(*args)
        reference.learn(*args)
        learned.append(args)
    probes = [(f"kv/s{i}", f"kv/f{i}", "read", f"seg{i}", None, f"ua{i}", None, None)
              for i in (0, 7, 149, 151)]
    for step in range(260):
        if step % 40 == 0:
            assert _plain(native.to_state()) == reference.state()
            for hod, probe in enumerate(probes):
                assert native.derive(probe, hod) == reference.derive(probe, hod)
        args = learned.pop()
        native.unlearn(*args)
        reference.unlearn(*args)
    for args in learned[:30]:  # values that left come back at the end, as in a dict
        native.learn(*args)
        reference.learn(*args)
    assert _plain(native.to_state()) == reference.state()
    assert [native.values(i) for i in range(4)] == [list(c) for c in reference.counts]
