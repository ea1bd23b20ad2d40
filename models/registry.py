"""Detector ``type`` (from config) -> detector object."""

from __future__ import annotations

from collections.abc import Sequence

from models.streaming import HalfSpaceTreesDetector


def build_detectors(settings: Sequence) -> list[HalfSpaceTreesDetector]:
    factories = {"halfspacetrees": HalfSpaceTreesDetector}
    detectors = []
    for s in settings:
        params = s.model_dump(exclude={"type"})
        detectors.append(factories[s.type](**params))
    return detectors
