"""What secretscope keeps about one identity: its event-time windows (what it is doing now) and
its baseline (what is normal for it), with plain-data snapshots of both.

``secretscope.features`` reads and updates this state; only ``FeatureExtractor.learn`` and
``unlearn`` touch the baseline.
"""

from __future__ import annotations

from collections import defaultdict, deque

from secretscope.novelty import DIMENSIONS, SECRET, SEGMENT, USER_AGENT, PeerGroup
from secretscope.windows import Distinct, Recent, WindowCounter

NEVER = -1e18  # the time of a mark that was never set
_EWMA_ALPHA = 0.1  # per completed hour of activity
WORKING_SHARE = 0.03  # an hour of the day holding 3% of the history is a working hour


class Undo:
    """What ``FeatureExtractor.learn`` changed, so ``unlearn`` can put it back."""

    __slots__ = ("how", "hod", "scalars", "rates")

    def __init__(self, how: int, hod: int, scalars: tuple, rates: tuple) -> None:
        self.how = how
        self.hod = hod
        self.scalars = scalars
        self.rates = rates


class IdentityState:
    """Everything secretscope keeps about one identity (a few KB for a typical one)."""

    __slots__ = (
        "requests_1m", "requests_1h", "requests_24h", "denied_1h", "denied_5m", "login_failed_5m",
        "secrets_1h", "secrets_24h", "denied_secrets_1h", "lists_1h", "reads_1h", "lists_10m",
        "creds_10m",
        "marks", "recent", "how", "hod", "history", "counts", "policy_writer",
        "requests_baseline", "secrets_baseline", "first_seen", "last_seen", "gap_mean", "gap_var",
        "new_segment_login", "baseline_hour", "hour_n", "hour_requests", "hour_secrets",
        "hours_seen", "peer", "newest_ts", "policies", "networks", "role_new", "role_new_newest",
        "places", "envs",
    )

    def __init__(self) -> None:
        self.requests_1m = Recent(60.0, maxlen=100_000)
        self.requests_1h = WindowCounter(60, 60)
        self.requests_24h = WindowCounter(900, 96)
        self.denied_1h = WindowCounter(60, 60)
        self.lists_1h = WindowCounter(60, 60)
        self.reads_1h = WindowCounter(60, 60)
        self.denied_5m = Recent(300.0)
        self.login_failed_5m = Recent(300.0)
        self.lists_10m = Recent(600.0)
        self.creds_10m = Recent(600.0, maxlen=10_000)
        self.secrets_1h = Distinct(3600.0)
        self.secrets_24h = Distinct(86400.0)
        self.denied_secrets_1h = Distinct(3600.0)
        # event time of the last list burst, policy write, denial burst, token creation
        self.marks = [NEVER, NEVER, NEVER, NEVER]
        self.recent: deque[tuple[float, str]] = deque(maxlen=64)
        # newest event time observed (entries of the windows older than a horizon before it may
        # have been dropped: what a finding names is cut to it, see runner._Batch.related)
        self.newest_ts = float("-inf")
        # baseline, changed only by learn()
        self.how = [0] * 168
        self.hod = [0] * 24
        self.history = 0
        self.counts: list[defaultdict[str, int]] = [defaultdict(int) for _ in DIMENSIONS]
        self.policy_writer = False
        self.requests_baseline = 0.0
        self.secrets_baseline = 0.0
        self.first_seen = 0.0
        self.last_seen = 0.0
        self.gap_mean = 0.0  # EWMA of log1p(seconds between learned events)
        self.gap_var = 0.0
        self.new_segment_login = NEVER  # time of the last learned login from a new segment
        # The usual rates move once per hour of event time, from the hour's learned events, so a
        # burst inside the current hour cannot drag its own baseline up.
        self.baseline_hour = -1
        self.hour_n = 0
        self.hour_requests = 0.0
        self.hour_secrets = 0.0
        self.hours_seen = 0
        self.peer: PeerGroup | None = None
        self.policies: tuple[str, ...] | None = None  # of the newest event: they pick the peers
        # network (segment, or the /16 of an address in no segment) -> last event time from it
        self.networks: dict[str, float] = {}
        # secret -> sorted times of successful reads of it while neither the identity nor its
        # peers had used it; bounded (see features._remember)
        self.role_new: dict[str, list[float]] = {}
        self.role_new_newest = NEVER  # newest time in role_new
        # baseline: learned calls per network (features.network_of), e.g. a home ISP's range
        self.places: dict[str, int] = {}
        # baseline: learned successful reads per environment of the secret (staging, production)
        self.envs: dict[str, int] = {}

    @property
    def segments(self) -> dict[str, int]:
        return self.counts[SEGMENT]

    @property
    def secrets_seen(self) -> dict[str, int]:
        return self.counts[SECRET]

    @property
    def agents_seen(self) -> dict[str, int]:
        return self.counts[USER_AGENT]

    def _scalars(self) -> tuple:
        return (self.policy_writer, self.first_seen, self.last_seen, self.gap_mean, self.gap_var,
                self.new_segment_login)

    def _set_scalars(self, scalars) -> None:
        (self.policy_writer, self.first_seen, self.last_seen, self.gap_mean, self.gap_var,
         self.new_segment_login) = scalars

    def to_state(self) -> list:
        """Plain lists and numbers, for snapshots (see ``secretscope.snapshot``)."""
        return [
            [list(r.items) for r in (self.requests_1m, self.denied_5m, self.login_failed_5m,
                                     self.lists_10m, self.creds_10m)],
            list(self.recent),
            [c.to_state() for c in (self.requests_1h, self.requests_24h, self.denied_1h,
                                    self.lists_1h, self.reads_1h)],
            [list(d.last.items()) for d in (self.secrets_1h, self.secrets_24h,
                                            self.denied_secrets_1h)],
            self.marks, self.how, self.hod, self.history, self.counts,
            list(self._scalars()), list(rates(self)),
            self.peer.key if self.peer is not None else None,
            self.newest_ts,
            list(self.policies) if self.policies is not None else None,
            self.networks,
            self.role_new,
            self.places,
            self.envs,
        ]

    @classmethod
    def from_state(cls, state: list, peers: dict[str, PeerGroup]) -> "IdentityState":
        st = cls()
        (recents, recent, counters, distincts, st.marks, st.how, st.hod, st.history, counts,
         scalars, rates, peer, st.newest_ts, policies, networks, role_new,
         places, envs) = state
        st.places = dict(places)
        st.envs = dict(envs)
        st.policies = tuple(policies) if policies is not None else None
        st.networks = dict(networks)
        st.role_new = {k: list(v) for k, v in role_new.items()}
        st.role_new_newest = max((v[-1] for v in st.role_new.values()), default=NEVER)
        st.counts = [defaultdict(int, c) for c in counts]
        for r, items in zip((st.requests_1m, st.denied_5m, st.login_failed_5m, st.lists_10m,
                             st.creds_10m), recents):
            r.items.extend(tuple(i) for i in items)
        st.recent.extend(tuple(i) for i in recent)
        for counter, saved in zip((st.requests_1h, st.requests_24h, st.denied_1h, st.lists_1h,
                                   st.reads_1h), counters):
            counter.load_state(saved)
        for d, items in zip((st.secrets_1h, st.secrets_24h, st.denied_secrets_1h), distincts):
            d.last.update(items)
        st._set_scalars(scalars)
        (st.baseline_hour, st.hour_n, st.hour_requests, st.hour_secrets, st.hours_seen,
         st.requests_baseline, st.secrets_baseline) = rates
        st.peer = peers.get(peer) if peer is not None else None
        return st

    def usual_hours(self, top: int = 6) -> list[int]:
        """Hours of the day (UTC) this identity is most active in, most active first."""
        ranked = sorted(range(24), key=lambda h: -self.hod[h])
        return [h for h in ranked[:top] if self.hod[h]]

    def working_hours(self) -> list[int]:
        """Hours of the day (UTC) that hold at least 3% of the identity's history."""
        floor = max(1.0, WORKING_SHARE * self.history)
        return [h for h in range(24) if self.hod[h] >= floor]

    def usual_segments(self, top: int = 3) -> list[tuple[str, float]]:
        total = self.history or 1
        ranked = sorted(self.segments.items(), key=lambda kv: -kv[1])[:top]
        return [(name, count / total) for name, count in ranked]


def rates(st: IdentityState) -> tuple:
    return (st.baseline_hour, st.hour_n, st.hour_requests, st.hour_secrets, st.hours_seen,
            st.requests_baseline, st.secrets_baseline)


def learn_rates(st: IdentityState, ts: float, requests_1h: float, secrets_1h: float) -> None:
    """Fold the usual hourly request count and breadth forward by one learned event.

    The hour's mean is folded into an EWMA when the next hour starts (a running mean over the
    first hours); until an identity has a completed hour, its baseline is the current hour's
    running mean, so newcomers do not look like bursts against a zero baseline.
    """
    hour = int(ts // 3600)
    if hour > st.baseline_hour:
        if st.hour_n:
            st.hours_seen += 1
            alpha = max(_EWMA_ALPHA, 1.0 / st.hours_seen)
            st.requests_baseline += alpha * (st.hour_requests / st.hour_n - st.requests_baseline)
            st.secrets_baseline += alpha * (st.hour_secrets / st.hour_n - st.secrets_baseline)
        st.baseline_hour, st.hour_n, st.hour_requests, st.hour_secrets = hour, 0, 0.0, 0.0
    st.hour_n += 1
    st.hour_requests += requests_1h
    st.hour_secrets += secrets_1h
    if not st.hours_seen:
        st.requests_baseline = st.hour_requests / st.hour_n
        st.secrets_baseline = st.hour_secrets / st.hour_n
