"""Per-identity robust baselines: how far above *its own* usual hours is this identity now?

For every identity and every measure (a feature such as ``requests_count_1h``) the detector keeps
the measure's **peak in each of the identity's last** ``window_hours`` **active hours** (hours of
event time with at least one learned row), and from them a median and a MAD. A row is scored by
how far its measures lie above those medians:

    z_m   = (log1p(observed_m) - median_m) / (1.4826 * MAD_m + z_floor)     (log1p scale)
    z     = max(0, max_m z_m)          only upward deviations count: less activity is not a threat
    score = 1 - exp(-z / z_scale)      monotone in z, in [0, 1]; 0.95 at z = 3 * z_scale

Medians and MADs are taken on the log1p scale (so "3 -> 30" counts like "30 -> 300"); ``z_floor``
keeps identities whose hours are all alike (MAD 0) from firing on one extra request. The rolling
median is exactly ``river.stats.RollingQuantile(q=0.5, window_size=window_hours)`` over the
hourly peaks, and the MAD that same median of the absolute deviations from it
(``tests/test_baseline_detector.py`` checks both against river); they are recomputed here with
numpy, for many identities at once, only when an hour closes. Explanations
(:meth:`RobustBaselineDetector.explain_row`, :meth:`~RobustBaselineDetector.explain`) report the
median and MAD in the measure's own units; the raw MAD is computed only for rows that score at or
above ``threshold``, against the window they were scored with.

Score, then learn: the baseline moves only when an identity's hour of event time closes (its
first row in a later hour), folding in the peak of that hour's *learned* rows, so a burst inside
the current hour cannot raise its own baseline, and rows that fired or that ``exclude`` marks
never enter it. Late rows (an earlier hour than the open one) count towards the open hour.
An identity is ``ready`` once ``min_hours`` active hours are in its window.

Cost: one dict lookup per row, then numpy per micro-batch: one round of vectorized scoring per
distinct hour an identity spans in the batch (usually one or two). Closing an hour writes one
column of the identity's window and sorts that window again for its median and MAD.

Memory grows with the hours an identity has: its window (``len(measures)`` float32 per completed
hour) sits in a pool of windows 8, 32 or ``window_hours`` hours wide, and moves to the next pool
when it fills (the narrower rows it leaves are not reused). With the defaults an identity seen
in a few hours holds 128 B of window and about 150 B of per-identity figures; one with a full
week of hours 2.7 KB of window and the 640 B it left behind, where every identity held 5.4 KB
when each window was ``window_hours`` wide and kept twice (in arrival order and sorted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Any

import numpy as np

from secretscope.models.base import ScoreBatch
from secretscope.features import INDEX, FeatureVector

__all__ = ["DEFAULT_MEASURES", "MeasureExplanation", "RobustBaselineDetector"]

DEFAULT_MEASURES: tuple[str, ...] = (
    "requests_count_1m",
    "requests_count_1h",
    "secrets_distinct_1h",
    "denied_count_5m",
)
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution is 0.6745 sigma
_NO_HOUR = -(1 << 62)  # open hour of an identity that has no rows yet
_STATE_VERSION = 1
_MAX_VALUE = 1e38  # finite in float32: +inf pads the sorted windows
_POOL_WIDTHS = (8, 32)  # hours of the windows of identities with few; then window_hours
_IDENTITY = attrgetter("event.identity")  # C-level per-row reads: a batch has thousands
_TS = attrgetter("event.ts")


@dataclass(frozen=True, slots=True)
class MeasureExplanation:
    """One measure of one row against the identity's baseline; median and MAD in the measure's
    own units (hourly peaks), ``z`` on the log1p scale the score uses."""

    measure: str
    observed: float
    median: float
    mad: float
    z: float

    def text(self) -> str:
        return (f"{self.measure} = {self.observed:g}, usual median {self.median:g} "
                f"(MAD {self.mad:g})")


class RobustBaselineDetector:
    """Robust per-identity baselines (rolling median and MAD of hourly peaks); see the module
    docstring.

    Examples
    --------
    >>> import numpy as np
    >>> from secretscope.features import FEATURE_NAMES, FeatureVector
    >>> from tests.helpers import make_event
    >>> det = RobustBaselineDetector(measures=("requests_count_1h",), min_hours=3)
    >>> def row(hour, count):
    ...     values = [0.0] * len(FEATURE_NAMES)
    ...     values[FEATURE_NAMES.index("requests_count_1h")] = count
    ...     return FeatureVector(make_event(identity="a", ts=hour * 3600.0), "x", tuple(values))
    >>> for hour, count in enumerate([10, 12, 11, 13]):
    ...     sb = det.score_then_learn([row(hour, count)], np.zeros(1, bool))
    >>> sb = det.score_then_learn([row(4, 12), row(4, 400)], np.zeros(2, bool))
    >>> sb.ready.tolist(), sb.fired.tolist()
    ([True, True], [False, True])
    >>> det.explain_row(1)[0].text()
    'requests_count_1h = 400, usual median 11.5 (MAD 1)'
    """

    def __init__(self, name: str = "baseline", measures: Sequence[str] = DEFAULT_MEASURES,
                 window_hours: int = 168, min_hours: int = 24, threshold: float = 0.95,
                 high_threshold: float = 0.99, z_floor: float = 0.3,
                 z_scale: float = 2.0) -> None:
        self.name = name
        self.measures = tuple(measures)
        self.window_hours = window_hours
        self.min_hours = min_hours
        self.threshold = threshold
        self.high_threshold = high_threshold
        self.z_floor = z_floor
        self.z_scale = z_scale
        unknown = [m for m in self.measures if m not in INDEX]
        if unknown or not self.measures or len(set(self.measures)) != len(self.measures):
            raise ValueError(f"measures must be distinct feature names; unknown: {unknown}")
        if not 1 <= int(min_hours) <= int(window_hours):
            raise ValueError("need 1 <= min_hours <= window_hours")
        self._cols = np.array([INDEX[m] for m in self.measures], dtype=np.intp)
        self._reset(0)

    # ------------------------------------------------------------------ state

    def _reset(self, capacity: int) -> None:
        self.identities_: dict[str, int] = {}
        self._ids: list[str] = []
        self.open_hour_ = None  # allocate afresh: nothing is kept
        self._alloc(max(capacity, 64))
        self._log: list[tuple] = []
        self._logging = False
        self._epoch = getattr(self, "_epoch", 0) + 1  # invalidates earlier checkpoints
        self._clear_last(0)

    def _alloc(self, cap: int) -> None:
        """Per-identity arrays, row = slot; grown by doubling (new rows are fresh)."""
        m = len(self.measures)
        old = getattr(self, "open_hour_", None)
        fresh = {
            "open_hour_": np.full(cap, _NO_HOUR, dtype=np.int64),  # hour being accumulated
            # peak of the open hour's learned rows, as the window will keep it: float32 (the
            # cast is monotone, so the peak of cast values is the cast of the peak)
            "peak_": np.zeros((cap, m), dtype=np.float32),
            "learned_": np.zeros(cap, dtype=np.int64),  # learned rows in the open hour
            "pool_": np.zeros(cap, dtype=np.int8),  # pool of the window (0: no hour yet)
            "row_": np.full(cap, -1, dtype=np.int64),  # the window's row in its pool
            "pos_": np.zeros(cap, dtype=np.int64),  # next window column to write (the oldest)
            "count_": np.zeros(cap, dtype=np.int64),  # completed hours in the window
            "med_log_": np.zeros((cap, m)),
            "mad_log_": np.zeros((cap, m)),
            "med_raw_": np.zeros((cap, m)),  # (the raw MAD is only needed to explain)
        }
        if old is None:
            # Pool p holds windows widths_[p] hours wide (pool 0: none, for identities without
            # a completed hour), hourly peaks in arrival order; a window that fills moves on.
            w = int(self.window_hours)
            self.widths_ = (0,) + tuple(x for x in _POOL_WIDTHS if x < w) + (w,)
            self._width_of = np.array(self.widths_)  # pool -> width, for per-slot lookups
            self.windows_ = [np.zeros((0, m, x), dtype=np.float32) for x in self.widths_]
            self.used_ = [0] * len(self.widths_)
        else:
            n = old.shape[0]
            for key, arr in fresh.items():
                arr[:n] = getattr(self, key)
        for key, arr in fresh.items():
            setattr(self, key, arr)

    def _take_rows(self, pool: int, k: int) -> np.ndarray:
        """``k`` fresh rows of pool ``pool`` (grown by doubling)."""
        used, windows = self.used_[pool], self.windows_[pool]
        if used + k > windows.shape[0]:
            grown = np.zeros((max(2 * windows.shape[0], used + k, 64),) + windows.shape[1:],
                             dtype=np.float32)
            grown[:used] = windows[:used]
            self.windows_[pool] = grown
        self.used_[pool] = used + k
        return np.arange(used, used + k)

    def _move_full(self, f: np.ndarray) -> None:
        """Move the windows of ``f`` that are as full as their pool allows to the next pool."""
        pool = self.pool_[f]
        moving = (self.count_[f] == self._width_of[pool]) & (pool < len(self.widths_) - 1)
        full, from_pool = f[moving], pool[moving]
        for p in np.unique(from_pool).tolist():
            g = full[from_pool == p]
            rows = self._take_rows(p + 1, g.size)
            if p:  # oldest first in columns 0..width-1: a pool before the last never wraps
                self.windows_[p + 1][rows, :, :self.widths_[p]] = self.windows_[p][self.row_[g]]
            self.pool_[g] = p + 1
            self.row_[g] = rows

    def _column(self, f: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Column ``pos`` of the windows of ``f`` (k, M); zeros where there is none (no window,
        or a full one that will move to the next pool)."""
        out = np.zeros((f.size, len(self.measures)), dtype=np.float32)
        pool = self.pool_[f]
        for p in np.unique(pool).tolist():
            at = np.flatnonzero((pool == p) & (pos < self.widths_[p]))
            if at.size:
                out[at] = self.windows_[p][self.row_[f[at]], :, pos[at]]
        return out

    def _set_column(self, f: np.ndarray, pos: np.ndarray, values: np.ndarray) -> None:
        pool = self.pool_[f]
        for p in np.unique(pool).tolist():
            if p:
                at = np.flatnonzero(pool == p)
                self.windows_[p][self.row_[f[at]], :, pos[at]] = values[at]

    def _sorted(self, f: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The windows of ``f`` ascending, padded with +inf past their count, as (at, windows)
        per pool: ``f[at]`` have windows (len(at), M, width) as float64."""
        out = []
        pool = self.pool_[f]
        for p in np.unique(pool).tolist():
            if not p:
                continue
            at = np.flatnonzero(pool == p)
            win = np.where(np.arange(self.widths_[p]) >= self.count_[f[at]][:, None, None],
                           np.inf, self.windows_[p][self.row_[f[at]]].astype(np.float64))
            win.sort(axis=-1)
            out.append((at, win))
        return out

    def window(self, identity: str) -> np.ndarray:
        """``identity``'s completed hours (count, M), oldest first: the peaks its baseline is
        made of."""
        slot = self.identities_[identity]
        count, pos, pool = int(self.count_[slot]), int(self.pos_[slot]), int(self.pool_[slot])
        if not pool:
            return np.zeros((0, len(self.measures)), dtype=np.float32)
        win = self.windows_[pool][self.row_[slot]].T  # (width, M)
        return win[:count] if count < self.window_hours else np.roll(win, -pos, axis=0)

    def _slots(self, identities: list[str]) -> np.ndarray:
        slots = list(map(self.identities_.get, identities, repeat(-1, len(identities))))
        if -1 in slots:
            before = len(self._ids)
            for k, ident in enumerate(identities):
                if slots[k] == -1:
                    slot = self.identities_.get(ident)
                    if slot is None:
                        slot = self.identities_[ident] = len(self._ids)
                        self._ids.append(ident)
                    slots[k] = slot
            if len(self._ids) > self.open_hour_.shape[0]:
                self._alloc(2 * len(self._ids))
            if self._logging:
                self._log.append(("new", before))
        return np.array(slots, dtype=np.intp)

    # ------------------------------------------------------------------ scoring

    def score_then_learn(self, batch: Sequence[FeatureVector], exclude: np.ndarray,
                         values: np.ndarray | None = None) -> ScoreBatch:
        n = len(batch)
        if values is None:
            values = np.array([fv.values for fv in batch], dtype=np.float64).reshape(n, -1)
        obs = np.clip(values[:, self._cols], 0.0, _MAX_VALUE)  # what nan_to_num then clip gave,
        obs[np.isnan(obs)] = 0.0  # for a third of the cost
        slots = self._slots(list(map(_IDENTITY, batch)))
        hours = np.floor(np.fromiter(map(_TS, batch), dtype=np.float64, count=n)
                         / 3600.0).astype(np.int64)
        exclude = np.asarray(exclude, dtype=bool)
        scores = np.zeros(n)
        ready = np.zeros(n, dtype=bool)
        self._clear_last(n)
        if n == 0:
            return ScoreBatch(self.name, scores, ready, ready.copy())
        segment, open_hour = self._segments(slots, hours)
        for rnd in range(int(segment.max()) + 1):
            rows = np.flatnonzero(segment == rnd) if rnd or segment.any() else np.arange(n)
            if rows.size == 0:
                continue
            if rnd:
                first, at = np.unique(slots[rows], return_index=True)
                self._close(first, open_hour[rows[at]])
            s = slots[rows]
            sc, rd = self._score_rows(rows, s, obs[rows])
            scores[rows], ready[rows] = sc, rd
            learn = ~exclude[rows] & ~(rd & (sc >= self.threshold))
            if learn.any():
                self._learn(s[learn], obs[rows][learn])
        fired = ready & (scores >= self.threshold)
        return ScoreBatch(self.name, scores, ready, fired)

    def _segments(self, slots: np.ndarray, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: how many hours its identity has opened so far in this batch (0 = still the
        hour open before it), and the hour then open. Rows of one segment share a baseline."""
        order = np.argsort(slots, kind="stable")
        s, h = slots[order], hours[order]
        start = np.empty(s.size, dtype=bool)
        start[0] = True
        np.not_equal(s[1:], s[:-1], out=start[1:])
        # Running max of the hour within each identity: rank the hours, offset each identity's
        # ranks above the previous identity's, accumulate.
        uniq, rank = np.unique(h, return_inverse=True)
        key = s.astype(np.int64) * uniq.size + rank
        running = uniq[np.maximum.accumulate(key) - s.astype(np.int64) * uniq.size]
        before = self.open_hour_[s]
        running = np.maximum(running, before)
        prev = np.empty_like(running)
        prev[0] = before[0]
        prev[1:] = np.where(start[1:], before[1:], running[:-1])
        opened = (running > prev).astype(np.int64)
        csum = np.cumsum(opened)
        group = np.cumsum(start) - 1
        first = np.flatnonzero(start)
        seg = csum - (csum[first] - opened[first])[group]
        segment = np.empty_like(seg)
        segment[order] = seg
        open_hour = np.empty_like(running)
        open_hour[order] = running
        return segment, open_hour

    def _score_rows(self, rows: np.ndarray, s: np.ndarray,
                    obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = self.count_[s]
        med, mad = self.med_log_[s], self.mad_log_[s]
        z = (np.log1p(obs) - med) / (_MAD_TO_SIGMA * mad + self.z_floor)
        top = np.argmax(z, axis=1)
        zmax = np.maximum(z[np.arange(z.shape[0]), top], 0.0)
        scores = np.where(count > 0, -np.expm1(-zmax / self.z_scale), 0.0)
        self.last_top_[rows] = top
        self.last_observed_[rows] = obs
        self.last_z_[rows] = np.where(count[:, None] > 0, z, 0.0)
        self.last_median_[rows] = self.med_raw_[s]
        hot = scores >= self.threshold  # explained against the window they were scored with
        if hot.any():
            self.last_mad_[rows[hot]] = self._raw_mad(s[hot])
        return scores, count >= self.min_hours

    def _learn(self, s: np.ndarray, obs: np.ndarray) -> None:
        if self._logging:
            u = np.unique(s)
            self._log.append(("learn", u, self.peak_[u].copy(), self.learned_[u].copy()))
        np.maximum.at(self.peak_, s, obs)
        np.add.at(self.learned_, s, 1)

    def _close(self, s: np.ndarray, new_hour: np.ndarray) -> None:
        """Close the open hour of identities ``s`` (unique): fold in its learned peak, if any."""
        f = s[self.learned_[s] > 0]
        if self._logging:
            self._log.append(("close", s, self.open_hour_[s].copy(), self.peak_[s].copy(),
                              self.learned_[s].copy(), f, self.pos_[f].copy(),
                              self.count_[f].copy(), self.pool_[f].copy(), self.row_[f].copy(),
                              list(self.used_), self._column(f, self.pos_[f]),
                              self.med_log_[f].copy(), self.mad_log_[f].copy(),
                              self.med_raw_[f].copy()))
        if f.size:
            self._move_full(f)
            pos = self.pos_[f]
            self._set_column(f, pos, self.peak_[f])
            self.pos_[f] = (pos + 1) % self.window_hours
            self.count_[f] = np.minimum(self.count_[f] + 1, self.window_hours)
            self._refresh(f)
        self.open_hour_[s] = new_hour
        self.peak_[s] = 0.0
        self.learned_[s] = 0

    def _refresh(self, f: np.ndarray) -> None:
        """Median and MAD on the log1p scale, and the raw median, of the windows of ``f``
        (river's RollingQuantile(0.5): the mean of the two middle values for even counts)."""
        for at, raw in self._sorted(f):
            g, count = f[at], self.count_[f[at]]
            self.med_raw_[g] = _middle(raw, count)
            self.med_log_[g], self.mad_log_[g] = _median_mad(np.log1p(raw), count)  # keeps order

    def _raw_mad(self, slots: np.ndarray) -> np.ndarray:
        mad = np.zeros((slots.size, len(self.measures)))
        for at, raw in self._sorted(slots):
            mad[at] = _median_mad(raw, self.count_[slots[at]])[1]
        return mad

    # ------------------------------------------------------------------ explanations

    def _clear_last(self, n: int) -> None:
        m = len(self.measures)
        self.last_top_ = np.zeros(n, dtype=np.intp)
        self.last_observed_ = np.zeros((n, m))
        self.last_z_ = np.zeros((n, m))
        self.last_median_ = np.zeros((n, m))
        self.last_mad_ = np.full((n, m), np.nan)

    def explain_row(self, i: int) -> list[MeasureExplanation]:
        """Row ``i`` of the last ``score_then_learn`` call against the baseline it was scored
        with, measures by decreasing z (the first one drove the score). The MAD is kept only
        for rows that scored at or above ``threshold`` (NaN for the others)."""
        order = np.argsort(-self.last_z_[i], kind="stable")
        return [MeasureExplanation(self.measures[k], float(self.last_observed_[i, k]),
                                   float(self.last_median_[i, k]), float(self.last_mad_[i, k]),
                                   float(self.last_z_[i, k])) for k in order.tolist()]

    def explain(self, identity: str, values: Sequence[float]) -> list[MeasureExplanation]:
        """A feature vector's ``values`` against ``identity``'s current baseline, measures by
        decreasing z; empty if the identity has no completed hour."""
        slot = self.identities_.get(identity)
        if slot is None or not self.count_[slot]:
            return []
        obs = np.maximum(np.asarray(values, dtype=np.float64)[self._cols], 0.0)
        z = ((np.log1p(obs) - self.med_log_[slot])
             / (_MAD_TO_SIGMA * self.mad_log_[slot] + self.z_floor))
        order = np.argsort(-z, kind="stable")
        mad = self._raw_mad(np.array([slot]))[0]
        return [MeasureExplanation(self.measures[k], float(obs[k]), float(self.med_raw_[slot, k]),
                                   float(mad[k]), float(z[k])) for k in order.tolist()]

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> tuple[int, int]:
        """Start an undo log of what learning changes from here (nothing is copied now).
        Only the latest checkpoint can be restored."""
        self._epoch += 1
        self._log = []
        self._logging = True
        return (self._epoch, 0)

    def restore(self, checkpoint: tuple[int, int]) -> None:
        epoch, length = checkpoint
        if epoch != self._epoch:
            raise ValueError("only the latest checkpoint can be restored")
        while len(self._log) > length:
            entry = self._log.pop()
            if entry[0] == "learn":
                _, u, peak, learned = entry
                self.peak_[u], self.learned_[u] = peak, learned
            elif entry[0] == "close":
                (_, s, open_hour, peak, learned, f, pos, count, pool, row, used, column,
                 med_log, mad_log, med_raw) = entry
                self.open_hour_[s], self.peak_[s], self.learned_[s] = open_hour, peak, learned
                self._set_column(f, pos, column)  # where the close wrote (maybe a new pool)
                self.pool_[f], self.row_[f], self.used_ = pool, row, used
                self.pos_[f], self.count_[f] = pos, count
                self.med_log_[f], self.mad_log_[f] = med_log, mad_log
                self.med_raw_[f] = med_raw
            else:  # identities first seen after the checkpoint
                before = entry[1]
                for ident in self._ids[before:]:
                    del self.identities_[ident]
                del self._ids[before:]
                for key, fill in (("open_hour_", _NO_HOUR), ("peak_", 0), ("learned_", 0),
                                  ("pool_", 0), ("row_", -1), ("pos_", 0), ("count_", 0),
                                  ("med_log_", 0), ("mad_log_", 0), ("med_raw_", 0)):
                    getattr(self, key)[before:] = fill

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain lists, numbers and strings; each identity's ring oldest hour first."""
        hours = [self.window(ident).astype(np.float64).tolist() for ident in self._ids]
        n = len(self._ids)
        return {
            "version": _STATE_VERSION,
            "measures": list(self.measures),
            "window_hours": int(self.window_hours),
            "identities": list(self._ids),
            "open_hour": self.open_hour_[:n].tolist(),
            "peak": self.peak_[:n].tolist(),
            "learned": self.learned_[:n].tolist(),
            "hours": hours,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("version", -1)) != _STATE_VERSION:
            raise ValueError(f"unsupported RobustBaselineDetector state version "
                             f"{state.get('version')}")
        if tuple(state["measures"]) != self.measures:
            raise ValueError(f"state is for measures {state['measures']}, "
                             f"not {list(self.measures)}")
        if int(state["window_hours"]) != self.window_hours:
            raise ValueError(f"state is for window_hours {state['window_hours']}, "
                             f"not {self.window_hours}")
        ids = [str(i) for i in state["identities"]]
        n, m = len(ids), len(self.measures)
        self._reset(n)
        self._ids = ids
        self.identities_ = {ident: slot for slot, ident in enumerate(ids)}
        if len(self.identities_) != n:
            raise ValueError("duplicate identities in state")
        self.open_hour_[:n] = np.array(state["open_hour"], dtype=np.int64).reshape(n)
        self.peak_[:n] = np.array(state["peak"], dtype=np.float64).reshape(n, m)  # to float32
        self.learned_[:n] = np.array(state["learned"], dtype=np.int64).reshape(n)
        if len(state["hours"]) != n:
            raise ValueError("hours must have one ring per identity")
        for slot, rows in enumerate(state["hours"]):
            ring = np.array(rows, dtype=np.float32).reshape(-1, m)
            if ring.shape[0] > self.window_hours:
                raise ValueError("more hours than window_hours")
            if len(ring):  # the narrowest pool that holds them
                pool = int(np.searchsorted(self._width_of, len(ring)))
                row = int(self._take_rows(pool, 1)[0])
                self.windows_[pool][row, :, :len(ring)] = ring.T
                self.pool_[slot], self.row_[slot] = pool, row
            self.count_[slot] = len(ring)
            self.pos_[slot] = len(ring) % self.window_hours
        filled = np.flatnonzero(self.count_[:n])
        if filled.size:
            self._refresh(filled)

    def __repr__(self) -> str:
        return (f"RobustBaselineDetector(name={self.name!r}, measures={list(self.measures)!r}, "
                f"window_hours={self.window_hours}, min_hours={self.min_hours})")


def _middle(srt: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Median of ascending windows (k, M, W) whose first ``count`` (k,) values are valid."""
    rows, cols = np.arange(srt.shape[0])[:, None], np.arange(srt.shape[1])[None, :]
    lo, hi = ((count - 1) // 2)[:, None], (count // 2)[:, None]
    return (srt[rows, cols, lo] + srt[rows, cols, hi]) / 2


def _median_mad(srt: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and median absolute deviation of ascending windows padded with +inf."""
    med = _middle(srt, count)
    dev = np.subtract(srt, med[..., None], out=srt)
    np.abs(dev, out=dev)
    dev.sort(axis=-1)  # the pads stay last (+inf)
    return med, _middle(dev, count)
