"""Processing state to bytes and back: identity baselines and windows, detector state, triage
suppression, plus whatever the caller adds (a stage's reorder buffer, watermarks).

Snapshots are msgpack, compressed; the store keeps a SHA-256 beside each one and refuses to load
a snapshot that does not match it (:class:`~secretscope.errors.ModelIntegrityError`). No pickle:
only plain lists, numbers and strings are decoded.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from secretscope.errors import ModelIntegrityError
from secretscope.features import IdentityState
from secretscope.identity import Dormant
from secretscope.lineage import LineageTracker
from secretscope.novelty import PeerGroup

VERSION = 5


def _plain(value: Any) -> Any:
    """numpy arrays and scalars to lists and numbers (msgpack knows neither)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dump(pipeline, extra: dict | None = None) -> bytes:
    state = {
        "version": VERSION,
        "peers": {k: g.to_state() for k, g in pipeline.extractor.peers.items()},
        "identities": {k: st.to_state() for k, st in pipeline.extractor.identities.items()},
        "lineage": pipeline.extractor.lineage.to_state(),
        "dormant": {k: d.to_state() for k, d in pipeline.extractor.dormant.items()},
        "next_sweep": pipeline.extractor.next_sweep,
        "detectors": [_plain(d.state_dict()) for d in pipeline.detectors],
        "incidents": pipeline.triage.to_state(),
        "extra": extra or {},
    }
    return zlib.compress(msgspec.msgpack.encode(state), 3)


def load(pipeline, blob: bytes) -> dict:
    """Restore ``pipeline`` from ``blob`` (whose checksum the store has verified); return extra."""
    try:
        state = msgspec.msgpack.decode(zlib.decompress(blob))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ModelIntegrityError(f"snapshot is not readable: {exc}") from None
    if state.get("version") != VERSION:
        raise ModelIntegrityError(
            f"snapshot version {state.get('version')} is not {VERSION}: it was written by another "
            "secretscope version. Run that version, or delete the snapshot row; the score stage "
            "then starts from its group's committed offset with empty baselines")
    peers = {k: PeerGroup.from_state(k, v) for k, v in state["peers"].items()}
    pipeline.extractor.peers = peers
    pipeline.extractor.identities = {k: IdentityState.from_state(v, peers)
                                     for k, v in state["identities"].items()}
    pipeline.extractor.lineage = LineageTracker.from_state(state.get("lineage"))
    pipeline.extractor.dormant = {k: Dormant.from_state(v) for k, v in state["dormant"].items()}
    pipeline.extractor.next_sweep = state["next_sweep"]
    if len(state["detectors"]) != len(pipeline.detectors):
        raise ModelIntegrityError("snapshot holds a different set of detectors than the config")
    for detector, saved in zip(pipeline.detectors, state["detectors"]):
        detector.load_state_dict(saved)
    pipeline.triage.load_state(state["incidents"])
    return state["extra"]
