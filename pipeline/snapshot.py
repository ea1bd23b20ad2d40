"""Processing state to bytes and back: identity baselines and windows, detector state, triage
suppression, plus whatever the caller adds (a stage's reorder buffer, watermarks).

Snapshots are msgpack, compressed; the store keeps a SHA-256 beside each one and refuses to load
a snapshot that does not match it (:class:`~pipeline.errors.ModelIntegrityError`). No pickle:
only plain lists, numbers and strings are decoded.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from models.hst import HalfSpaceTrees
from pipeline.errors import ModelIntegrityError
from pipeline.features import IdentityState

VERSION = 1


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
        "identities": {k: st.to_state() for k, st in pipeline.extractor.identities.items()},
        "detectors": [_plain(d.model.state_dict()) for d in pipeline.detectors],
        "suppression": [[ident, det, ts] for (ident, det), ts in
                        pipeline.triage._last_raised.items()],
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
        raise ModelIntegrityError(f"snapshot version {state.get('version')} is not {VERSION}")
    pipeline.extractor.identities = {k: IdentityState.from_state(v)
                                     for k, v in state["identities"].items()}
    if len(state["detectors"]) != len(pipeline.detectors):
        raise ModelIntegrityError("snapshot holds a different set of detectors than the config")
    for detector, saved in zip(pipeline.detectors, state["detectors"]):
        detector.model = HalfSpaceTrees.from_state_dict(saved)
    pipeline.triage._last_raised = {(i, d): ts for i, d, ts in state["suppression"]}
    return state["extra"]
