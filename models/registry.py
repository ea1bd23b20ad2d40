"""Detector ``type`` (from config) -> detector object."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from secretscope.models.base import Detector


def _halfspacetrees(s, base_dir: Path) -> Detector:
    from secretscope.models.streaming import HalfSpaceTreesDetector

    return HalfSpaceTreesDetector(**s.model_dump(exclude={"type", "severity_at_threshold"}))


def _robustbaseline(s, base_dir: Path) -> Detector:
    from secretscope.models.baseline import RobustBaselineDetector

    return RobustBaselineDetector(**s.model_dump(exclude={"type", "severity_at_threshold"}))


def _isolationforest(s, base_dir: Path) -> Detector:
    from secretscope.models.batch import IsolationForestDetector

    params = s.model_dump(exclude={"type", "model_path", "severity_at_threshold"})
    return IsolationForestDetector(model_path=s.model_file(base_dir), **params)


FACTORIES: dict[str, Callable[..., Detector]] = {
    "halfspacetrees": _halfspacetrees,
    "robustbaseline": _robustbaseline,
    "isolationforest": _isolationforest,
}


def build_detectors(settings: Sequence, base_dir: str | Path = "") -> list[Detector]:
    """Detectors for the ``detectors`` section of a config; relative paths in it (model files)
    start at ``base_dir``, the config file's directory."""
    return [FACTORIES[s.type](s, Path(base_dir)) for s in settings]
