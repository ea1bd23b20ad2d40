"""What every detector returns, and the sign convention.

Everything above ``models/`` reads scores the same way: **higher = more anomalous**. Libraries
with the opposite convention (scikit-learn's ``score_samples`` is low = anomalous) are flipped in
exactly one adapter, never by callers.

Detectors work on micro-batches of :class:`~secretscope.features.FeatureVector` so they can score
vectorized; ``score_then_learn`` scores the batch first and learns only from rows that did not
fire, so an attack never becomes part of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from secretscope.features import FeatureVector


@dataclass(frozen=True, slots=True)
class ScoreBatch:
    """Scores of one detector for one micro-batch, row-aligned with the batch.

    ``scores``: float64, higher = more anomalous. ``ready``: False while the detector (or the
    identity it scores) is still warming up; a row that is not ready never fires.
    ``fired``: the detector's own verdict at its threshold.
    """

    detector: str
    scores: np.ndarray
    ready: np.ndarray
    fired: np.ndarray


@runtime_checkable
class Detector(Protocol):
    name: str

    def score_then_learn(self, batch: Sequence[FeatureVector], exclude: np.ndarray) -> ScoreBatch:
        """Score every row, then learn from the rows that neither fired nor are in ``exclude``
        (rows another detector already flagged)."""
        ...

    def checkpoint(self) -> object:
        """A cheap token of the current learned state, for ``restore`` within one batch (the
        runner re-scores a batch tail when a flagged row had been learned optimistically)."""
        ...

    def restore(self, checkpoint: object) -> None:
        ...

    def state_dict(self) -> dict:
        """Learned state as plain lists, numbers and strings (for msgpack snapshots)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        ...
