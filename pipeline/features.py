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

_EWMA_ALPHA = 0.02
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

    def ids(self, limit: int) -> list[str]:
        return [eid for _, eid in list(self.items)[-limit:]]


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
        "last_seen",
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

    def usual_hours(self, top: int = 6) -> list[int]:
        """Hours of the day (UTC) this identity is most active in, most active first."""
        ranked = sorted(range(24), key=lambda h: -self.hod[h])
        return [h for h in ranked[:top] if self.hod[h]]

    def usual_segments(self, top: int = 3) -> list[tuple[str, float]]:
        total = self.history or 1
        ranked = sorted(self.segments.items(), key=lambda kv: -kv[1])[:top]
        return [(name, count / total) for name, count in ranked]


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
        st = self.identities.get(event.identity)
        if st is None:
            st = self.identities[event.identity] = IdentityState()
        ts = event.ts
        segment = self.segments.lookup(event.remote_address)
        denied = event.outcome == DENIED

        st.recent.append((ts, event.event_id))
        st.requests_1m.add(ts, event.event_id)
        st.requests_1h.add(ts)
        st.requests_24h.add(ts)
        if denied:
            st.denied_1h.add(ts)
            st.denied_5m.add(ts, event.event_id)
        if event.is_login and event.outcome != SUCCESS:
            st.login_failed_5m.add(ts, event.event_id)
        secret_access = is_secret_access(event)
        if secret_access:
            distinct_1h = st.secrets_1h.add(event.secret, ts)
            distinct_24h = st.secrets_24h.add(event.secret, ts)
        else:
            distinct_1h = len(st.secrets_1h.last)
            distinct_24h = len(st.secrets_24h.last)
        requests_1h = st.requests_1h.count(ts)

        history = st.history
        how, hod = hour_slots(ts)
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
            float(st.requests_1m.count(ts)),
            float(requests_1h),
            float(st.requests_24h.count(ts)),
            float(distinct_1h),
            float(distinct_24h),
            distinct_1h / (st.secrets_baseline + 1.0),
            float(st.denied_5m.count(ts)),
            st.denied_1h.count(ts) / requests_1h if requests_1h else 0.0,
            float(st.login_failed_5m.count(ts)),
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

    def learn(self, fv: FeatureVector) -> None:
        """Fold an event that raised no finding into its identity's baseline."""
        event = fv.event
        st = self.identities[event.identity]
        how, hod = hour_slots(event.ts)
        st.how[how] += 1
        st.hod[hod] += 1
        st.segments[fv.segment] = st.segments.get(fv.segment, 0) + 1
        if is_secret_access(event):
            st.secrets_seen.add(event.secret)
        if event.user_agent:
            st.agents_seen.add(event.user_agent)
        if is_policy_write(event):
            st.policy_writer = True
        values = fv.values
        # Running mean over the first events, then an EWMA: a fixed small alpha would start
        # from the first event's value and take hundreds of events to forget it.
        alpha = max(_EWMA_ALPHA, 1.0 / (st.history + 1))
        st.requests_baseline += alpha * (values[_REQUESTS_1H] - st.requests_baseline)
        st.secrets_baseline += alpha * (values[_SECRETS_1H] - st.secrets_baseline)
        if not st.history:
            st.first_seen = event.ts
        st.history += 1
        if event.ts > st.last_seen:
            st.last_seen = event.ts


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
