"""Streaming detectors: Half-Space Trees over identity-relative, scaled features.

The model is global (one forest for the fleet) but its inputs are relative to each identity's own
baseline: how unusual this hour is *for this identity*, whether the segment is new *to it*, how
its current rate compares with *its* usual rate. The scaling is fixed (no learned min/max), so
a replay gives the same inputs as the live run did.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from secretscope.models.base import ScoreBatch
from secretscope.models.hst import HalfSpaceTrees
from secretscope.features import INDEX, FeatureVector

HST_INPUTS: tuple[str, ...] = (
    "hour_of_week_rarity",
    "hour_of_day_rarity",
    "segment_rarity",
    "segment_novelty",
    "secret_novelty",
    "user_agent_novelty",
    "rate_vs_baseline",
    "breadth_vs_baseline",
    "requests_level_1m",
    "denied_ratio_1h",
)

_I = INDEX
_CLASS_MAX = 3.0  # frequency classes run from 0 (frequent) to 3 (unseen)
# Baseline events after which an identity is judged on its own history alone; before that its
# peers' history fills in (cold start), in proportion.
_OWN_HISTORY_FULL = 100.0


def _squash(ratio: np.ndarray) -> np.ndarray:
    """Map a non-negative ratio to [0, 1): 1 -> 0.25, 3 -> 0.5, 9 -> 0.75."""
    return ratio / (ratio + 3.0)


def hst_inputs(values: np.ndarray) -> np.ndarray:
    """Scale a (rows x FEATURE_NAMES) matrix into the [0, 1] inputs the trees expect.

    Novelty and time-of-day inputs blend the identity's own view with its peers' by how much
    history the identity has, so a new identity is judged against its role from its first event.
    """
    v = values
    out = np.empty((v.shape[0], len(HST_INPUTS)))
    own = np.minimum(1.0, v[:, _I["history_events"]] / _OWN_HISTORY_FULL)
    peer = 1.0 - own
    # A 3-hour window holds 3/168 of a uniform week and 3/24 of a uniform day.
    own_day = v[:, _I["hour_of_day_share"]]
    day_share = own * own_day + peer * v[:, _I["hour_of_day_peer_share"]]
    day_rarity = 1.0 - np.minimum(1.0, day_share * 8.0)
    week_rarity = 1.0 - np.minimum(1.0, v[:, _I["hour_of_week_share"]] * 56.0)
    # An hour-of-week profile means something only once a whole week is in it.
    out[:, 0] = np.where(v[:, _I["history_days"]] >= 7.0, week_rarity, day_rarity)
    out[:, 1] = day_rarity
    seg_peer = v[:, _I["segment_peer_freq_class"]] / _CLASS_MAX
    out[:, 2] = own * (1.0 - np.sqrt(v[:, _I["segment_share"]])) + peer * seg_peer
    out[:, 3] = own * v[:, _I["segment_first_seen"]] + peer * (seg_peer >= 1.0)
    # A secret new to an identity that often reads new ones (a person) says less than one new
    # to a service that reads the same three: discounted by its rate of new secrets.
    new_rate = v[:, _I["secrets_known"]] / np.maximum(1.0, v[:, _I["history_events"]])
    out[:, 4] = (own * v[:, _I["secret_first_seen"]] * np.maximum(0.0, 1.0 - 4.0 * new_rate)
                 + peer * (v[:, _I["secret_peer_freq_class"]] >= _CLASS_MAX))
    out[:, 5] = (own * v[:, _I["user_agent_first_seen"]]
                 + peer * (v[:, _I["user_agent_peer_freq_class"]] >= _CLASS_MAX))
    out[:, 6] = _squash(v[:, _I["requests_count_1h"]] / (v[:, _I["requests_baseline_1h"]] + 1.0))
    out[:, 7] = _squash(v[:, _I["secrets_distinct_1h"]] / (v[:, _I["secrets_baseline_1h"]] + 1.0))
    out[:, 8] = np.minimum(1.0, np.log1p(v[:, _I["requests_count_1m"]]) / np.log1p(600.0))
    out[:, 9] = v[:, _I["denied_ratio_1h"]]
    return out


class HalfSpaceTreesDetector:
    """River-exact Half-Space Trees scored in micro-batches, with two warm-ups: the forest's
    first window, and for each identity ``min_history`` baseline events of its own or a peer
    group of ``min_peer_members`` identities with ``min_peer_history`` events."""

    def __init__(self, name: str = "hst", n_trees: int = 10, height: int = 8,
                 window_size: int = 250, seed: int = 42, threshold: float = 0.97,
                 high_threshold: float = 0.99, min_history: int = 50,
                 min_history_days: float = 1.0, min_peer_history: int = 1000,
                 min_peer_members: int = 2) -> None:
        self.name = name
        self.threshold = threshold
        self.high_threshold = high_threshold
        self.min_history = min_history
        self.min_history_days = min_history_days
        self.min_peer_history = min_peer_history
        self.min_peer_members = min_peer_members
        self.model = HalfSpaceTrees(list(HST_INPUTS), n_trees=n_trees, height=height,
                                    window_size=window_size, seed=seed)

    def score_then_learn(self, batch: Sequence[FeatureVector], exclude: np.ndarray,
                         values: np.ndarray | None = None) -> ScoreBatch:
        if values is None:
            values = np.array([fv.values for fv in batch], dtype=np.float64)
        X = hst_inputs(values)
        # Warm on its own history, or (cold start) on a peer group with enough history.
        warm = (((values[:, _I["history_events"]] >= self.min_history)
                 & (values[:, _I["history_days"]] >= self.min_history_days))
                | ((values[:, _I["peer_history"]] >= self.min_peer_history)
                   & (values[:, _I["peer_members"]] >= self.min_peer_members)))
        # Only rows that can fire are kept out of the forest: excluding cold identities' rows
        # too would freeze a forest whose first window was all newcomers.
        thresholds = np.where(warm, self.threshold, np.inf)
        # Per row: the forest may finish its first window in the middle of a batch.
        forest_ready = np.zeros(len(batch), dtype=bool)
        scores, _learned = self.model.score_then_learn(X, skip=exclude, threshold=thresholds,
                                                       ready_out=forest_ready)
        ready = warm & forest_ready
        fired = ready & (scores >= self.threshold)
        return ScoreBatch(self.name, scores, ready, fired)

    def checkpoint(self) -> tuple:
        return self.model.checkpoint()

    def restore(self, checkpoint: tuple) -> None:
        self.model.restore(checkpoint)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model = HalfSpaceTrees.from_state_dict(state)
