"""What secretscope keeps about one identity: its event-time windows (what it is doing now) and
its baseline (what is normal for it), both compiled objects of ``secretscope._native``, with
plain-data snapshots of both.

``secretscope.features`` reads and updates this state; only ``FeatureExtractor.learn`` and
``unlearn`` touch the baseline.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

from secretscope.novelty import (AUTH_METHOD, COUNTED, DIMENSIONS, ENVIRONMENT, MOUNT, OPERATION,
                              PLACE, SECRET, SEGMENT, USER_AGENT, PeerGroup, untag)
from secretscope._native import Baseline, IdentityWindows

NEVER = -1e18  # the time of a mark that was never set
_EWMA_ALPHA = 0.1  # per completed hour of activity (of the usual rates, _native.Baseline)
WORKING_SHARE = 0.03  # an hour of the day holding 3% of the history is a working hour
RECENT = 64  # (time, id) of an identity's last events kept for the findings it raises
BURST_HORIZON = 300.0  # seconds of denials and failed logins kept with their event ids

HOD = 168  # where the hours of the day start in a profile of hours of the week, then of the day


class Undo:
    """What ``FeatureExtractor.learn`` changed, so ``unlearn`` can put it back: the hours it
    counted and the baseline's scalars before (``Baseline.learn`` returns them)."""

    __slots__ = ("how", "hod", "saved")

    def __init__(self, how: int, hod: int, saved) -> None:
        self.how = how
        self.hod = hod
        self.saved = saved


class RecentView:
    """An identity's last events as (time, event id), oldest first, read from its windows
    whenever iterated (``runner._Batch`` reads it before and after a batch)."""

    __slots__ = ("win",)
    maxlen = RECENT

    def __init__(self, win: IdentityWindows) -> None:
        self.win = win

    def __len__(self) -> int:
        return self.win.recent_len()

    def __iter__(self):
        return iter(self.win.recent_items())


class IdentityState:
    """Everything secretscope keeps about one identity, in two compiled objects:

    * ``win`` (``secretscope._native.IdentityWindows``): its windows, what it is doing now
      (counts, distinct secrets, bursts, networks, its last events), with
      ``secretscope.windows`` as the reference they are checked against;
    * ``base`` (``secretscope._native.Baseline``): its baseline, what is normal for it (hour
      profiles, learned events per value of every novelty dimension, of the networks it called
      from alone and of the environments of the secrets it read, usual rates and gaps).

    About 2 KB for one that made ten calls (``benchmarks/identity_memory.py`` measures it).
    """

    __slots__ = ("win", "base", "peer", "policies", "role_new", "role_new_newest")

    def __init__(self, win: IdentityWindows | None = None, base: Baseline | None = None) -> None:
        # the windows, and the newest event time observed (entries of the windows older than a
        # horizon before it may have been dropped: what a finding names is cut to it, see
        # runner._Batch.related)
        self.win = IdentityWindows() if win is None else win
        self.base = Baseline() if base is None else base  # changed only by learn()
        self.peer: PeerGroup | None = None
        self.policies: tuple[str, ...] | None = None  # of the newest event: they pick the peers
        # secret -> sorted times of successful reads of it while neither the identity nor its
        # peers had used it; bounded (see features._remember); None until the first
        self.role_new: dict[str, list[float]] | None = None
        self.role_new_newest = NEVER  # newest time in role_new

    @property
    def newest_ts(self) -> float:
        return self.win.newest_ts

    @newest_ts.setter
    def newest_ts(self, ts: float) -> None:
        self.win.newest_ts = ts

    @property
    def recent(self) -> RecentView:
        return RecentView(self.win)

    @property
    def history(self) -> int:
        """Events in the baseline."""
        return self.base.history

    @property
    def requests_baseline(self) -> float:
        return self.base.requests_baseline

    @property
    def secrets_baseline(self) -> float:
        return self.base.secrets_baseline

    @property
    def how(self) -> list[int]:
        """Events per hour of the week (a copy)."""
        return self.base.hours()[:HOD]

    @property
    def hod(self) -> list[int]:
        """Events per hour of the day (a copy)."""
        return self.base.hours()[HOD:]

    @property
    def seen(self) -> dict[str, int]:
        """Learned events per tagged value (``novelty.tagged``), in the order first counted (a
        copy: not the hot path)."""
        return dict(self.base.seen_items())

    @property
    def counts(self) -> list[dict[str, int]]:
        """Learned events per value, one dict per dimension of ``novelty.DIMENSIONS`` (built
        on demand: for explanations and snapshots, not the hot path)."""
        return self._counted()[:len(DIMENSIONS)]

    def _counted(self) -> list[dict[str, int]]:
        out: list[dict[str, int]] = [{} for _ in range(COUNTED)]
        for key, n in self.seen.items():
            d, value = untag(key)
            out[d][value] = n
        return out

    @property
    def places(self) -> dict[str, int]:
        """Learned calls per network the identity used alone (``features.network_of``)."""
        return self._counted()[PLACE]

    @property
    def envs(self) -> dict[str, int]:
        """Learned successful reads per environment of the secret (staging, production)."""
        return self._counted()[ENVIRONMENT]

    @property
    def segments(self) -> dict[str, int]:
        return self.counts[SEGMENT]

    @property
    def secrets_seen(self) -> dict[str, int]:
        return self.counts[SECRET]

    @property
    def agents_seen(self) -> dict[str, int]:
        return self.counts[USER_AGENT]

    def to_state(self) -> list:
        """Plain lists and numbers, for snapshots (see ``secretscope.snapshot``)."""
        recents, recent, counters, distincts, marks, newest_ts, networks = self.win.to_state()
        how, hod, history, seen, distinct, scalars, rates = self.base.to_state()
        return [
            recents, recent, counters, distincts, marks, how, hod, history, seen, distinct,
            scalars, rates, self.peer.key if self.peer is not None else None, newest_ts,
            list(self.policies) if self.policies is not None else None, networks,
            self.role_new or {},
        ]

    @classmethod
    def from_state(cls, state: list, peers: dict[str, PeerGroup]) -> "IdentityState":
        (recents, recent, counters, distincts, marks, how, hod, history, seen, distinct,
         scalars, rates, peer, newest_ts, policies, networks, role_new) = state
        st = cls(IdentityWindows.from_state(recents, recent, counters, distincts, marks,
                                            newest_ts, networks),
                 Baseline.from_state(how, hod, history, seen, distinct, scalars, rates))
        st.policies = tuple(policies) if policies is not None else None
        st.role_new = {k: list(v) for k, v in role_new.items()} or None
        st.role_new_newest = max((v[-1] for v in (st.role_new or {}).values()), default=NEVER)
        st.peer = peers.get(peer) if peer is not None else None
        return st

    def usual_hours(self, top: int = 6) -> list[int]:
        """Hours of the day (UTC) this identity is most active in, most active first."""
        hod = self.hod
        ranked = sorted(range(24), key=lambda h: -hod[h])
        return [h for h in ranked[:top] if hod[h]]

    def working_hours(self) -> list[int]:
        """Hours of the day (UTC) that hold at least 3% of the identity's history."""
        floor = max(1.0, WORKING_SHARE * self.history)
        hod = self.hod
        return [h for h in range(24) if hod[h] >= floor]

    def usual_segments(self, top: int = 3) -> list[tuple[str, float]]:
        total = self.history or 1
        ranked = sorted(self.segments.items(), key=lambda kv: -kv[1])[:top]
        return [(name, count / total) for name, count in ranked]


# Dimensions whose counts a dormant summary keeps: few values per identity, and the ones that
# tell a returning owner (its usual segment, client, auth method) from a stranger.
_KEPT_DIMENSIONS = frozenset((OPERATION, SEGMENT, USER_AGENT, AUTH_METHOD, MOUNT, PLACE,
                              ENVIRONMENT))


class Dormant:
    """What is kept of an identity idle longer than ``state.idle_days``: enough of its baseline
    that its return is judged as a dormant identity's (idle time, history, usual networks,
    segments and clients, novelty normalized by its distinct values), without its windows,
    recent events or its per-secret, per-folder and per-address counts."""

    __slots__ = ("history", "scalars", "rates", "newest_ts", "policies", "hod", "seen",
                 "distinct")

    def __init__(self, history: int, scalars: tuple, rates: tuple, newest_ts: float,
                 policies: tuple[str, ...] | None, hod: array, seen: dict[str, int],
                 distinct: array) -> None:
        self.history = history
        self.scalars = scalars
        self.rates = rates
        self.newest_ts = newest_ts
        self.policies = policies
        self.hod = hod
        self.seen = seen
        self.distinct = distinct

    @classmethod
    def of(cls, st: IdentityState) -> "Dormant":
        _, hod, history, seen, distinct, scalars, rates = st.base.to_state()
        seen = {k: n for k, n in seen.items() if untag(k)[0] in _KEPT_DIMENSIONS}
        return cls(history, tuple(scalars), _closed_rates(rates), st.newest_ts, st.policies,
                   _profile(hod), seen, array("I", distinct))

    def revive(self, peer_group: Callable[[tuple[str, ...]], PeerGroup]) -> IdentityState:
        """A fresh state holding this summary's baseline (its windows start empty)."""
        st = IdentityState(base=Baseline.from_state(
            [0] * HOD, list(self.hod), self.history, self.seen, list(self.distinct),
            list(self.scalars), list(self.rates)))
        st.newest_ts = self.newest_ts
        st.policies = self.policies
        if self.policies is not None:
            st.peer = peer_group(self.policies)
        return st

    def to_state(self) -> list:
        return [self.history, list(self.scalars), list(self.rates), self.newest_ts,
                list(self.policies) if self.policies is not None else None, list(self.hod),
                self.seen, list(self.distinct)]

    @classmethod
    def from_state(cls, state: list) -> "Dormant":
        history, scalars, rates_, newest, policies, hod, seen, distinct = state
        return cls(history, tuple(scalars), tuple(rates_), newest,
                   tuple(policies) if policies is not None else None, _profile(hod),
                   dict(seen), array("I", distinct))


def _closed_rates(rates) -> tuple:
    """The usual rates with the hour in progress folded in, as its successor hour would."""
    _, hour_n, hour_requests, hour_secrets, hours_seen, requests, secrets = rates
    if hour_n:
        hours_seen += 1
        alpha = max(_EWMA_ALPHA, 1.0 / hours_seen)
        requests += alpha * (hour_requests / hour_n - requests)
        secrets += alpha * (hour_secrets / hour_n - secrets)
    return (-1, 0, 0.0, 0.0, hours_seen, requests, secrets)


def _profile(counts: list[int]) -> array:
    """An hour profile in the narrowest type its counts fit."""
    top = max(counts, default=0)
    return array("B" if top < 255 else "H" if top < 65535 else "I", counts)
