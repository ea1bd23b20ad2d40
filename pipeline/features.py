"""Per-identity features, driven by event time.

The same code serves the streaming pipeline and notebooks: :class:`FeatureExtractor` is fed one
event at a time (``observe``) and told afterwards which events may become baseline (``learn``);
:func:`feature_frame` runs the same two calls over an iterable and returns a pandas DataFrame.

Two kinds of state per identity:

* **windows** (request counts, distinct secrets, denials) describe what the identity is doing
  now; ``observe`` updates them for every event, anomalous or not.
* **baseline** (hour-of-week profile, known segments, secrets and user agents, usual rates)
  describes what is normal for it; only ``learn`` updates it, and the pipeline calls ``learn``
  only for events that raised no finding, so an attacker never becomes the baseline.

Windows use event time (``AccessEvent.ts``), never the wall clock, so a replay of last month
gives the features the live run saw.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from pipeline.events import DENIED, SUCCESS, AccessEvent
from pipeline.segments import SegmentTable

if TYPE_CHECKING:
    import pandas as pd

FEATURE_NAMES: tuple[str, ...] = (
    "requests_count_1m",
    "requests_count_1h",
    "requests_count_24h",
    "secrets_distinct_1h",
    "secrets_distinct_24h",
    "secrets_ratio_1h",  # secrets_distinct_1h over the identity's usual (secrets_baseline_1h + 1)
    "denied_count_5m",
    "denied_ratio_1h",
    "login_failed_count_5m",
    "hour_of_week_share",  # share of the identity's history in this hour of the week (+-1 h)
    "hour_of_day_share",  # share in this hour of the day (+-1 h), any weekday
    "segment_share",  # share of the identity's history from this network segment
    "segment_first_seen",  # 1.0 if the identity was never seen in this segment
    "secret_first_seen",  # 1.0 if the identity never accessed this secret
    "user_agent_first_seen",  # 1.0 if the identity never used this user agent
    "policy_write_first_seen",  # 1.0 if this writes an ACL policy and the identity never did
    "requests_baseline_1h",  # usual requests_count_1h for the identity (EWMA over its history)
    "secrets_baseline_1h",  # usual secrets_distinct_1h for the identity
    "history_events",  # events already in the identity's baseline
    "history_days",  # event time since the identity's first baseline event
)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_REQUESTS_1H = INDEX["requests_count_1h"]
_SECRETS_1H = INDEX["secrets_distinct_1h"]

_EWMA_ALPHA = 0.1  # per completed hour of activity
_POLICY_PREFIXES = ("sys/policy/", "sys/policies/acl/")
_WRITE_OPS = frozenset({"create", "update", "delete"})
_NON_SECRET_PREFIXES = ("sys/", "auth/", "identity/", "cubbyhole/")


class FeatureVector(msgspec.Struct, frozen=True, gc=False):
    """An event with its features; ``values`` is aligned with :data:`FEATURE_NAMES`.
    (A frozen struct for the same reason as AccessEvent: one per event on the hot path.)"""

    event: AccessEvent
    segment: str
    values: tuple[float, ...]

    def __getitem__(self, name: str) -> float:
        return self.values[INDEX[name]]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES, self.values))


class Windows(msgspec.Struct, frozen=True, gc=False):
    """The window part of an event's features (what ``observe_windows`` measured)."""

    segment: str
    requests_1m: float
    requests_1h: float
    requests_24h: float
    secrets_1h: float
    secrets_24h: float
    denied_5m: float
    denied_ratio_1h: float
    login_failed_5m: float


class Undo:
    """What ``FeatureExtractor.learn`` changed, so ``unlearn`` can put it back."""

    __slots__ = ("how", "hod", "secret_added", "agent_added", "policy_writer", "first_seen",
                 "last_seen", "rates")

    def __init__(self, how: int, hod: int, policy_writer: bool, first_seen: float,
                 last_seen: float, rates: tuple) -> None:
        self.how = how
        self.hod = hod
        self.secret_added = False
        self.agent_added = False
        self.policy_writer = policy_writer
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.rates = rates


class WindowCounter:
    """Count of events in the last ``n`` buckets of ``width`` seconds (a ring of buckets)."""

    __slots__ = ("width", "n", "counts", "ids", "total", "newest")

    def __init__(self, width: int, n: int) -> None:
        self.width = width
        self.n = n
        self.counts = [0] * n
        self.ids = [-1] * n
        self.total = 0
        self.newest = -1

    def _advance(self, bucket: int) -> None:
        if bucket <= self.newest:
            return
        if bucket - self.newest >= self.n:
            self.counts = [0] * self.n
            self.ids = [-1] * self.n
            self.ids[bucket % self.n] = bucket
            self.total = 0
        else:
            counts, ids, n = self.counts, self.ids, self.n
            for b in range(self.newest + 1, bucket + 1):
                i = b % n
                self.total -= counts[i]
                counts[i] = 0
                ids[i] = b
        self.newest = bucket

    def add(self, ts: float) -> None:
        bucket = int(ts // self.width)
        self._advance(bucket)
        i = bucket % self.n
        if self.ids[i] == bucket:  # late events older than the window are dropped
            self.counts[i] += 1
            self.total += 1

    def count(self, ts: float) -> int:
        self._advance(int(ts // self.width))
        return self.total


class _Recent:
    """Timestamps (and ids) of the last events of one kind within a horizon, for bursts."""

    __slots__ = ("horizon", "items")

    def __init__(self, horizon: float, maxlen: int = 256) -> None:
        self.horizon = horizon
        self.items: deque[tuple[float, str]] = deque(maxlen=maxlen)

    def add(self, ts: float, event_id: str) -> None:
        self.items.append((ts, event_id))

    def count(self, ts: float) -> int:
        items, floor = self.items, ts - self.horizon
        while items and items[0][0] <= floor:
            items.popleft()
        return len(items)


class _Distinct:
    """Distinct keys seen within a horizon (last-seen order, oldest first)."""

    __slots__ = ("horizon", "last")

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self.last: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str, ts: float) -> int:
        last = self.last
        if key in last:
            if ts >= last[key]:
                last[key] = ts
                last.move_to_end(key)
        else:
            last[key] = ts
        floor = ts - self.horizon
        while last:
            oldest = next(iter(last.values()))
            if oldest > floor:
                break
            last.popitem(last=False)
        return len(last)


class IdentityState:
    """Everything secretscope keeps about one identity (about 2 KB for a typical one)."""

    __slots__ = (
        "requests_1m", "requests_1h", "requests_24h", "denied_1h", "denied_5m", "login_failed_5m",
        "secrets_1h", "secrets_24h", "recent", "how", "hod", "history", "segments", "secrets_seen",
        "agents_seen", "policy_writer", "requests_baseline", "secrets_baseline", "first_seen",
        "last_seen", "baseline_hour", "hour_n", "hour_requests", "hour_secrets", "hours_seen",
    )

    def __init__(self) -> None:
        self.requests_1m = _Recent(60.0, maxlen=100_000)
        self.requests_1h = WindowCounter(60, 60)
        self.requests_24h = WindowCounter(900, 96)
        self.denied_1h = WindowCounter(60, 60)
        self.denied_5m = _Recent(300.0)
        self.login_failed_5m = _Recent(300.0)
        self.secrets_1h = _Distinct(3600.0)
        self.secrets_24h = _Distinct(86400.0)
        self.recent: deque[tuple[float, str]] = deque(maxlen=64)
        # baseline, changed only by learn()
        self.how = [0] * 168
        self.hod = [0] * 24
        self.history = 0
        self.segments: dict[str, int] = {}
        self.secrets_seen: set[str] = set()
        self.agents_seen: set[str] = set()
        self.policy_writer = False
        self.requests_baseline = 0.0
        self.secrets_baseline = 0.0
        self.first_seen = 0.0
        self.last_seen = 0.0
        # The usual rates move once per hour of event time, from the hour's learned events, so a
        # burst inside the current hour cannot drag its own baseline up.
        self.baseline_hour = -1
        self.hour_n = 0
        self.hour_requests = 0.0
        self.hour_secrets = 0.0
        self.hours_seen = 0

    def to_state(self) -> list:
        """Plain lists and numbers, for snapshots (see ``pipeline.snapshot``)."""
        return [
            list(self.requests_1m.items), list(self.denied_5m.items),
            list(self.login_failed_5m.items), list(self.recent),
            [[c.counts, c.ids, c.total, c.newest]
             for c in (self.requests_1h, self.requests_24h, self.denied_1h)],
            list(self.secrets_1h.last.items()), list(self.secrets_24h.last.items()),
            self.how, self.hod, self.history, self.segments, sorted(self.secrets_seen),
            sorted(self.agents_seen), self.policy_writer, self.first_seen, self.last_seen,
            list(_rates(self)),
        ]

    @classmethod
    def from_state(cls, state: list) -> "IdentityState":
        st = cls()
        (requests_1m, denied_5m, login_failed_5m, recent, counters, secrets_1h, secrets_24h,
         st.how, st.hod, st.history, st.segments, secrets_seen, agents_seen, st.policy_writer,
         st.first_seen, st.last_seen, rates) = state
        st.requests_1m.items.extend(tuple(i) for i in requests_1m)
        st.denied_5m.items.extend(tuple(i) for i in denied_5m)
        st.login_failed_5m.items.extend(tuple(i) for i in login_failed_5m)
        st.recent.extend(tuple(i) for i in recent)
        for counter, (counts, ids, total, newest) in zip(
                (st.requests_1h, st.requests_24h, st.denied_1h), counters):
            counter.counts, counter.ids, counter.total, counter.newest = counts, ids, total, newest
        st.secrets_1h.last.update(secrets_1h)
        st.secrets_24h.last.update(secrets_24h)
        st.secrets_seen, st.agents_seen = set(secrets_seen), set(agents_seen)
        (st.baseline_hour, st.hour_n, st.hour_requests, st.hour_secrets, st.hours_seen,
         st.requests_baseline, st.secrets_baseline) = rates
        return st

    def usual_hours(self, top: int = 6) -> list[int]:
        """Hours of the day (UTC) this identity is most active in, most active first."""
        ranked = sorted(range(24), key=lambda h: -self.hod[h])
        return [h for h in ranked[:top] if self.hod[h]]

    def usual_segments(self, top: int = 3) -> list[tuple[str, float]]:
        total = self.history or 1
        ranked = sorted(self.segments.items(), key=lambda kv: -kv[1])[:top]
        return [(name, count / total) for name, count in ranked]


def _rates(st: IdentityState) -> tuple:
    return (st.baseline_hour, st.hour_n, st.hour_requests, st.hour_secrets, st.hours_seen,
            st.requests_baseline, st.secrets_baseline)


def _learn_rates(st: IdentityState, ts: float, values: tuple[float, ...]) -> None:
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
    st.hour_requests += values[_REQUESTS_1H]
    st.hour_secrets += values[_SECRETS_1H]
    if not st.hours_seen:
        st.requests_baseline = st.hour_requests / st.hour_n
        st.secrets_baseline = st.hour_secrets / st.hour_n


def hour_slots(ts: float) -> tuple[int, int]:
    """(hour of week with Monday 00:00 UTC = 0, hour of day)."""
    hour = int(ts // 3600)
    hod = hour % 24
    # 1970-01-01 was a Thursday: day 0 has weekday 3.
    return ((hour // 24 + 3) % 7) * 24 + hod, hod


def is_secret_access(event: AccessEvent) -> bool:
    return event.operation != "help" and not event.path.startswith(_NON_SECRET_PREFIXES)


def is_policy_write(event: AccessEvent) -> bool:
    return event.operation in _WRITE_OPS and event.path.startswith(_POLICY_PREFIXES)


class FeatureExtractor:
    """Per-identity state and the feature functions; see the module docstring."""

    def __init__(self, segments: SegmentTable) -> None:
        self.segments = segments
        self.identities: dict[str, IdentityState] = {}

    def state(self, identity: str) -> IdentityState | None:
        return self.identities.get(identity)

    def observe(self, event: AccessEvent) -> FeatureVector:
        """Update the windows with ``event`` and return its features against the baseline."""
        return self.derive(event, self.observe_windows(event))

    def observe_windows(self, event: AccessEvent) -> Windows:
        """Record ``event`` in its identity's windows; return the window part of its features.

        Windows do not depend on the baseline, so this is done once per event even when the
        pipeline has to derive the baseline features again (see ``Pipeline.process_batch``).
        """
        st = self.identities.get(event.identity)
        if st is None:
            st = self.identities[event.identity] = IdentityState()
        ts = event.ts
        st.recent.append((ts, event.event_id))
        st.requests_1m.add(ts, event.event_id)
        st.requests_1h.add(ts)
        st.requests_24h.add(ts)
        if event.outcome == DENIED:
            st.denied_1h.add(ts)
            st.denied_5m.add(ts, event.event_id)
        if event.is_login and event.outcome != SUCCESS:
            st.login_failed_5m.add(ts, event.event_id)
        if is_secret_access(event):
            distinct_1h = st.secrets_1h.add(event.secret, ts)
            distinct_24h = st.secrets_24h.add(event.secret, ts)
        else:
            distinct_1h = len(st.secrets_1h.last)
            distinct_24h = len(st.secrets_24h.last)
        requests_1h = st.requests_1h.count(ts)
        return Windows(
            self.segments.lookup(event.remote_address),
            float(st.requests_1m.count(ts)),
            float(requests_1h),
            float(st.requests_24h.count(ts)),
            float(distinct_1h),
            float(distinct_24h),
            float(st.denied_5m.count(ts)),
            st.denied_1h.count(ts) / requests_1h if requests_1h else 0.0,
            float(st.login_failed_5m.count(ts)),
        )

    def derive(self, event: AccessEvent, w: Windows) -> FeatureVector:
        """The features of an event whose windows are ``w``, against the current baseline."""
        st = self.identities[event.identity]
        ts = event.ts
        segment = w.segment
        history = st.history
        how, hod = hour_slots(ts)
        secret_access = is_secret_access(event)
        if history:
            h_week, h_day = st.how, st.hod
            how_share = (h_week[how - 1] + h_week[how] + h_week[(how + 1) % 168]) / history
            hod_share = (h_day[hod - 1] + h_day[hod] + h_day[(hod + 1) % 24]) / history
            seg_count = st.segments.get(segment, 0)
            seg_share = seg_count / history
            seg_new = 0.0 if seg_count else 1.0
            secret_new = 1.0 if secret_access and event.secret not in st.secrets_seen else 0.0
            agent_new = 1.0 if event.user_agent and event.user_agent not in st.agents_seen else 0.0
        else:
            how_share = hod_share = seg_share = 0.0
            seg_new = secret_new = agent_new = 1.0
        policy_new = 1.0 if is_policy_write(event) and not st.policy_writer else 0.0
        values = (
            w.requests_1m,
            w.requests_1h,
            w.requests_24h,
            w.secrets_1h,
            w.secrets_24h,
            w.secrets_1h / (st.secrets_baseline + 1.0),
            w.denied_5m,
            w.denied_ratio_1h,
            w.login_failed_5m,
            how_share,
            hod_share,
            seg_share,
            seg_new,
            secret_new,
            agent_new,
            policy_new,
            st.requests_baseline,
            st.secrets_baseline,
            float(history),
            (ts - st.first_seen) / 86400.0 if history else 0.0,
        )
        return FeatureVector(event, segment, values)

    def learn(self, fv: FeatureVector) -> Undo:
        """Fold an event that raised no finding into its identity's baseline.

        Returns what ``unlearn`` needs to take it out again exactly: the pipeline learns
        optimistically before its detectors have scored a batch, and backs out the few events
        they then flag.
        """
        event = fv.event
        st = self.identities[event.identity]
        how, hod = hour_slots(event.ts)
        undo = Undo(how, hod, st.policy_writer, st.first_seen, st.last_seen, _rates(st))
        st.how[how] += 1
        st.hod[hod] += 1
        st.segments[fv.segment] = st.segments.get(fv.segment, 0) + 1
        if is_secret_access(event) and event.secret not in st.secrets_seen:
            st.secrets_seen.add(event.secret)
            undo.secret_added = True
        if event.user_agent and event.user_agent not in st.agents_seen:
            st.agents_seen.add(event.user_agent)
            undo.agent_added = True
        if is_policy_write(event):
            st.policy_writer = True
        _learn_rates(st, event.ts, fv.values)
        if not st.history:
            st.first_seen = event.ts
        st.history += 1
        if event.ts > st.last_seen:
            st.last_seen = event.ts
        return undo

    def unlearn(self, fv: FeatureVector, undo: Undo) -> None:
        """Exactly reverse ``learn(fv)``; learns must be undone newest first."""
        event = fv.event
        st = self.identities[event.identity]
        st.how[undo.how] -= 1
        st.hod[undo.hod] -= 1
        left = st.segments[fv.segment] - 1
        if left:
            st.segments[fv.segment] = left
        else:
            del st.segments[fv.segment]
        if undo.secret_added:
            st.secrets_seen.discard(event.secret)
        if undo.agent_added:
            st.agents_seen.discard(event.user_agent)
        st.policy_writer = undo.policy_writer
        (st.baseline_hour, st.hour_n, st.hour_requests, st.hour_secrets, st.hours_seen,
         st.requests_baseline, st.secrets_baseline) = undo.rates
        st.first_seen = undo.first_seen
        st.last_seen = undo.last_seen
        st.history -= 1


def feature_frame(events: Iterable[AccessEvent], segments: SegmentTable,
                  extractor: FeatureExtractor | None = None) -> "pd.DataFrame":
    """Features of ``events`` as a DataFrame, computed by the pipeline's own code.

    Every event is learned after it is observed (no detector decides here); pass an extractor to
    continue from existing state.
    """
    import pandas as pd

    extractor = extractor or FeatureExtractor(segments)
    rows, index = [], []
    for event in events:
        fv = extractor.observe(event)
        extractor.learn(fv)
        rows.append((event.time, event.identity, event.display_name, event.operation,
                     event.secret, event.outcome, fv.segment) + fv.values)
        index.append(event.event_id)
    columns = ["time", "identity", "display_name", "operation", "secret", "outcome",
               "segment", *FEATURE_NAMES]
    return pd.DataFrame(rows, columns=columns, index=pd.Index(index, name="event_id"))
