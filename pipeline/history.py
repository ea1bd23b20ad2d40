"""Feature history: a deterministic sample of baseline feature vectors, kept for batch training.

``secretscope train`` fits its batch models on these rows. Only rows that raised nothing are
recorded (the pipeline learned them into the baseline), so an attack never becomes training
data. The sample is chosen by a hash of the event id, not at random, so a replay of the same
log records the same rows; the store ignores rows it already holds.

Rows are stored as the float64 values packed little-endian, with a hash of the feature names
they are aligned with (:data:`NAMES_HASH`); the store keeps each hash's names list, so rows
recorded before features were added or reordered are still read by name.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import compress
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from secretscope.features import FEATURE_NAMES, FeatureVector

if TYPE_CHECKING:
    from secretscope.features import Undo
    from secretscope.store import Store


def names_hash(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


NAMES_HASH = names_hash(FEATURE_NAMES)
_PACK = struct.Struct(f"<{len(FEATURE_NAMES)}d")
_EVENT_ID = attrgetter("event.event_id")


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One recorded feature vector; ``values`` are aligned with the names of ``names_hash``."""

    identity: str
    event_id: str
    time: datetime
    names_hash: str
    values: bytes


def encode_values(values: Sequence[float]) -> bytes:
    return _PACK.pack(*values)


def decode_values(blobs: Sequence[bytes], width: int) -> np.ndarray:
    """Rows x ``width`` float64 matrix of packed value blobs of one names hash."""
    if not blobs:
        return np.empty((0, width))
    return np.frombuffer(b"".join(blobs), dtype="<f8").reshape(len(blobs), width)


class HistoryRecorder:
    """Samples learned rows of each batch into the store (see the module docstring).

    Cost when enabled: a CRC of the event id per learned row, plus the rows kept; the store
    writes them in bulk with the next findings, snapshot or on close.
    """

    def __init__(self, store: "Store | None", sample: float) -> None:
        self.store = store
        self.sample = sample
        # crc32 is uniform enough for sampling and about ten times cheaper than a sha.
        self._below = int(sample * (1 << 32))
        self.enabled = store is not None and self._below > 0
        self.recorded = 0

    def sampled(self, event_id: str) -> bool:
        return zlib.crc32(event_id.encode()) < self._below

    def record(self, vectors: Sequence[FeatureVector], undo: Sequence["Undo | None"]) -> int:
        """Keep the sampled rows of a processed batch whose ``undo`` is set (they were learned:
        nothing fired on them). Returns how many were kept."""
        if not self.enabled:
            return 0
        # the hash of every row in C (map chains), Python only for the few sampled
        crcs = map(zlib.crc32, map(str.encode, map(_EVENT_ID, vectors)))
        sampled = compress(range(len(vectors)), map(self._below.__gt__, crcs))
        rows = [
            HistoryRow(fv.event.identity, fv.event.event_id,
                       datetime.fromtimestamp(fv.event.ts, timezone.utc), NAMES_HASH,
                       _PACK.pack(*fv.values))
            for fv in (vectors[i] for i in sampled if undo[i] is not None)
        ]
        if rows:
            self.store.add_feature_history(rows)  # type: ignore[union-attr]
            self.recorded += len(rows)
        return len(rows)
