"""Batch detectors: a scikit-learn IsolationForest trained on stored feature history.

``secretscope train`` fits the forest on sampled baseline rows (``pipeline/history.py``),
calibrates it and writes two files: ``NAME.skops`` (the forest, in skops' format: no pickle) and
``NAME.skops.manifest.json`` (inputs, versions, rows and time range, calibration table, the
sha256 of the .skops file). The pipeline loads the pair only after checking the sha256, that the
file holds no types outside :data:`TRUSTED_TYPES`, that every tree's node arrays are in bounds,
and that the forest was trained on the inputs :func:`iforest_inputs` computes now.

Scores are calibrated: the detector's score of a row is the share of training rows that were
less anomalous (an empirical CDF in [0, 1]), so ``threshold: 0.999`` means "more unusual than
99.9% of the baseline it was trained on".

    >>> import numpy as np
    >>> from secretscope.features import FEATURE_NAMES
    >>> rng = np.random.default_rng(0)
    >>> values = rng.random((2000, len(FEATURE_NAMES)))
    >>> values[:, INDEX["history_events"]] = 100.0
    >>> trained = train_isolation_forest(values, n_estimators=20, min_rows=100)
    >>> scores = trained.score(values[:5])
    >>> bool(((0.0 <= scores) & (scores <= 1.0)).all())
    True
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from secretscope.models.base import ScoreBatch
from secretscope.errors import ModelIntegrityError, TrainingError
from secretscope.features import FEATURE_NAMES, INDEX, FeatureVector

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.ensemble import IsolationForest

log = logging.getLogger(__name__)

FORMAT = "secretscope-isolationforest/1"
MANIFEST_SUFFIX = ".manifest.json"
# Bump when iforest_inputs computes an input differently under the same name.
TRANSFORM_VERSION = 2  # bump when iforest_inputs changes: models trained before are refused

IFOREST_INPUTS: tuple[str, ...] = (
    "hour_rarity",  # of the hour of week once a week is in the profile, else of the hour of day
    "hour_of_day_rarity",
    "segment_rarity",
    "segment_first_seen",
    "secret_first_seen",
    "user_agent_first_seen",
    "rate_vs_baseline",  # log1p(requests in 1h over the identity's usual)
    "breadth_vs_baseline",  # log1p(distinct secrets in 1h over the identity's usual)
    "denied_ratio_1h",
    "novelty",  # the strongest unseen value for the identity, normalized by its rate of new ones
    "peer_novelty",  # ... unseen by its peers too
    "folder_new_for_peers",
    "dormancy",  # days idle, saturating at a week
    "list_to_read_ratio_1h",
    "dynamic_creds_10m",  # log1p of dynamic credential requests in 10 minutes
)
# The features iforest_inputs reads (training needs them in the history).
IFOREST_SOURCES: tuple[str, ...] = (
    "hour_of_week_share", "hour_of_day_share", "history_days", "segment_share",
    "segment_first_seen", "secret_first_seen", "user_agent_first_seen", "requests_count_1h",
    "requests_baseline_1h", "secrets_distinct_1h", "secrets_baseline_1h", "denied_ratio_1h",
    "novelty_score", "peer_novelty_score", "folder_peer_freq_class", "idle_days",
    "list_to_read_ratio_1h", "dynamic_creds_count_10m",
)
_HISTORY = INDEX["history_events"]

# skops reports sklearn's Tree as untrusted because its node indices are not bounds-checked by
# scikit-learn; we accept it only together with _check_trees, which validates them.
TRUSTED_TYPES: frozenset[str] = frozenset({"sklearn.tree._tree.Tree"})
_CALIBRATION_POINTS = 1001


def iforest_inputs(values: np.ndarray) -> np.ndarray:
    """Identity-relative inputs of a (rows x FEATURE_NAMES) matrix, columns as IFOREST_INPUTS.

    Features are taken by name, so features added to FEATURE_NAMES later change nothing here.
    """
    v = values

    def col(name: str) -> np.ndarray:
        return v[:, INDEX[name]]

    out = np.empty((v.shape[0], len(IFOREST_INPUTS)))
    # A 3-hour window holds 3/168 of a uniform week and 3/24 of a uniform day.
    day_rarity = 1.0 - np.minimum(1.0, col("hour_of_day_share") * 8.0)
    week_rarity = 1.0 - np.minimum(1.0, col("hour_of_week_share") * 56.0)
    out[:, 0] = np.where(col("history_days") >= 7.0, week_rarity, day_rarity)
    out[:, 1] = day_rarity
    out[:, 2] = 1.0 - np.sqrt(np.clip(col("segment_share"), 0.0, 1.0))
    out[:, 3] = col("segment_first_seen")
    out[:, 4] = col("secret_first_seen")
    out[:, 5] = col("user_agent_first_seen")
    out[:, 6] = np.log1p(col("requests_count_1h") / (col("requests_baseline_1h") + 1.0))
    out[:, 7] = np.log1p(col("secrets_distinct_1h") / (col("secrets_baseline_1h") + 1.0))
    out[:, 8] = col("denied_ratio_1h")
    out[:, 9] = col("novelty_score")
    out[:, 10] = col("peer_novelty_score")
    out[:, 11] = col("folder_peer_freq_class") >= 3.0
    out[:, 12] = np.minimum(1.0, col("idle_days") / 7.0)
    out[:, 13] = np.log1p(col("list_to_read_ratio_1h"))
    out[:, 14] = np.log1p(col("dynamic_creds_count_10m"))
    return out


def _anomaly(forest: "IsolationForest", X: np.ndarray) -> np.ndarray:
    """The one place scikit-learn's sign is flipped: higher = more anomalous."""
    return -forest.score_samples(X)


@dataclass(frozen=True)
class Calibration:
    """Raw anomaly score -> share of training rows strictly less anomalous, interpolated
    between the points kept: every distinct training score, or quantiles every 0.1% plus
    every 0.001% in the top 1%, where thresholds live."""

    scores: np.ndarray
    shares: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray) -> "Calibration":
        s = np.sort(np.asarray(raw, dtype=np.float64))
        xs = np.unique(s)
        if len(xs) > 2 * _CALIBRATION_POINTS:
            last = len(s) - 1
            ranks = np.concatenate([np.linspace(0, last, _CALIBRATION_POINTS),
                                    np.linspace(0.99 * last, last, _CALIBRATION_POINTS)])
            xs = np.unique(s[ranks.round().astype(np.int64)])
        return cls(xs, np.searchsorted(s, xs, side="left") / len(s))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(raw, self.scores, self.shares, left=0.0, right=1.0)

    def to_json(self) -> dict:
        return {"scores": self.scores.tolist(), "shares": self.shares.tolist()}

    @classmethod
    def from_json(cls, doc: dict, where: str) -> "Calibration":
        try:
            xs = np.asarray(doc["scores"], dtype=np.float64)
            ps = np.asarray(doc["shares"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelIntegrityError(f"{where}: calibration table unreadable: {exc}") from None
        if (xs.ndim != 1 or xs.shape != ps.shape or not len(xs)
                or not (np.isfinite(xs).all() and np.isfinite(ps).all())
                or (np.diff(xs) <= 0).any() or (np.diff(ps) < 0).any()
                or ps[0] < 0 or ps[-1] > 1):
            raise ModelIntegrityError(f"{where}: calibration table is not an increasing "
                                      "table of finite scores and shares in [0, 1]")
        return cls(xs, ps)


@dataclass(frozen=True)
class TrainedForest:
    """A fitted forest with its calibration and manifest (what ``save``/``load`` move)."""

    forest: "IsolationForest"
    calibration: Calibration
    manifest: dict = field(default_factory=dict)

    def score(self, values: np.ndarray) -> np.ndarray:
        """Calibrated scores in [0, 1] (higher = more anomalous) of a FEATURE_NAMES matrix."""
        if not len(values):
            return np.empty(0)
        return self.calibration(_anomaly(self.forest, iforest_inputs(values)))

    @property
    def sha256(self) -> str:
        return self.manifest.get("sha256", "")


def _matrix(data: "pd.DataFrame | np.ndarray") -> tuple[np.ndarray, tuple[str, str] | None]:
    """(rows x FEATURE_NAMES matrix, (first, last) event time if the frame has a time column)."""
    if isinstance(data, np.ndarray):
        if data.ndim != 2 or data.shape[1] != len(FEATURE_NAMES):
            raise TrainingError(f"expected a (rows x {len(FEATURE_NAMES)}) matrix aligned with "
                                f"FEATURE_NAMES, got shape {data.shape}")
        return np.asarray(data, dtype=np.float64), None
    missing = [name for name in (*IFOREST_SOURCES, "history_events") if name not in data.columns]
    if missing:
        raise TrainingError("feature names mismatch: the training data has no "
                            f"{', '.join(missing)} (recorded by an older feature set?); replay "
                            "logs with this version to record history it can use")
    values = data.reindex(columns=list(FEATURE_NAMES)).to_numpy(dtype=np.float64)
    span = None
    if "time" in data.columns and len(data):
        times = data["time"]
        span = (_iso(times.min()), _iso(times.max()))
    return values, span


def _iso(value) -> str:
    dt = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat()


def train_isolation_forest(data: "pd.DataFrame | np.ndarray", *, n_estimators: int = 100,
                           max_samples: int | str = "auto", contamination: float | str = "auto",
                           seed: int = 42, min_history: int = 50,
                           min_rows: int = 1000) -> TrainedForest:
    """Fit and calibrate an IsolationForest on baseline feature rows.

    ``data``: a DataFrame with feature-name columns (``Store.feature_history`` or
    ``secretscope.features.feature_frame``; a ``time`` column gives the trained time range) or a
    (rows x FEATURE_NAMES) matrix. Rows of identities with fewer than ``min_history`` baseline
    events are left out, as the detector never fires on them. ``contamination`` only sets
    scikit-learn's own offset; the detector uses the calibration instead.
    """
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import IsolationForest

    values, span = _matrix(data)
    sources = [INDEX[name] for name in IFOREST_SOURCES]
    usable = np.isfinite(values[:, sources]).all(axis=1) & (values[:, _HISTORY] >= min_history)
    values = values[usable]
    if len(values) < min_rows:
        raise TrainingError(f"too few rows to train on: {len(values):,} usable feature rows "
                            f"(identities with at least {min_history} baseline events), need "
                            f"{min_rows:,}; replay more logs with store.feature_history_sample "
                            "> 0 or widen --since/--until")
    X = iforest_inputs(values)
    forest = IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                             contamination=contamination, random_state=seed)
    forest.fit(X)
    calibration = Calibration.fit(_anomaly(forest, X))
    manifest = {
        "format": FORMAT,
        "inputs": list(IFOREST_INPUTS),
        "source_features": list(IFOREST_SOURCES),
        "transform_version": TRANSFORM_VERSION,
        "sklearn_version": sklearn_version,
        "rows": int(len(values)),
        "trained_from": span[0] if span else None,
        "trained_until": span[1] if span else None,
        "trained_at": datetime.now(timezone.utc).isoformat(),
        "params": {"n_estimators": n_estimators, "max_samples": max_samples,
                   "contamination": contamination, "seed": seed, "min_history": min_history},
        "calibration": calibration.to_json(),
    }
    return TrainedForest(forest, calibration, manifest)


def manifest_path(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(path.name + MANIFEST_SUFFIX)


def save_model(trained: TrainedForest, path: str | Path) -> TrainedForest:
    """Write ``path`` (skops) and its manifest; returns the model with the final manifest."""
    import skops
    import skops.io as sio

    path = Path(path)
    blob = sio.dumps(trained.forest)
    manifest = {**trained.manifest, "model_file": path.name, "skops_version": skops.__version__,
                "sha256": hashlib.sha256(blob).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, blob)
    _write_atomic(manifest_path(path), orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return TrainedForest(trained.forest, trained.calibration, manifest)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def load_model(path: str | Path) -> TrainedForest:
    """Load a model written by :func:`save_model`, after the checks in the module docstring.
    Raises ModelIntegrityError naming the file and what failed."""
    import skops.io as sio
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import IsolationForest

    path = Path(path)
    mpath = manifest_path(path)
    try:
        blob = path.read_bytes()
        manifest = orjson.loads(mpath.read_bytes())
    except OSError as exc:
        raise ModelIntegrityError(f"{exc.filename}: cannot read model: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ModelIntegrityError(f"{mpath}: manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelIntegrityError(f"{mpath}: not a {FORMAT} manifest")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.get("sha256"):
        raise ModelIntegrityError(f"{path}: sha256 {digest} does not match its manifest "
                                  f"({manifest.get('sha256')}); refusing to load it")
    try:
        untrusted = set(sio.get_untrusted_types(data=blob))
    except Exception as exc:  # skops raises several types on malformed archives
        raise ModelIntegrityError(f"{path}: not a readable skops file: {exc}") from None
    if untrusted - TRUSTED_TYPES:
        raise ModelIntegrityError(f"{path}: holds types outside the reviewed allow-list: "
                                  f"{', '.join(sorted(untrusted - TRUSTED_TYPES))}")
    if list(manifest.get("inputs", ())) != list(IFOREST_INPUTS) \
            or manifest.get("transform_version") != TRANSFORM_VERSION:
        raise ModelIntegrityError(
            f"{mpath}: trained on inputs {manifest.get('inputs')} (transform "
            f"{manifest.get('transform_version')}) but this version computes "
            f"{list(IFOREST_INPUTS)} (transform {TRANSFORM_VERSION}); retrain with "
            "`secretscope train`")
    try:
        forest = sio.loads(blob, trusted=sorted(untrusted))
    except Exception as exc:
        raise ModelIntegrityError(f"{path}: cannot load: {exc}") from None
    if type(forest) is not IsolationForest:
        raise ModelIntegrityError(f"{path}: holds a {type(forest).__name__}, "
                                  "not an IsolationForest")
    _check_trees(forest, path)
    calibration = Calibration.from_json(manifest.get("calibration") or {}, str(mpath))
    if manifest.get("sklearn_version") != sklearn_version:
        log.warning("%s: trained with scikit-learn %s, running %s", path,
                    manifest.get("sklearn_version"), sklearn_version)
    return TrainedForest(forest, calibration, manifest)


def _check_trees(forest: "IsolationForest", path: Path) -> None:
    """Refuse trees whose node arrays would make scikit-learn read out of bounds: children must
    point forward inside the tree (so there are no cycles either) and split features must exist."""

    def bad(why: str) -> ModelIntegrityError:
        return ModelIntegrityError(f"{path}: malformed forest: {why}")

    n_inputs = getattr(forest, "n_features_in_", None)
    if n_inputs != len(IFOREST_INPUTS):
        raise bad(f"{n_inputs} inputs, expected {len(IFOREST_INPUTS)}")
    estimators = getattr(forest, "estimators_", None)
    features = getattr(forest, "estimators_features_", None)
    if not estimators or features is None or len(features) != len(estimators):
        raise bad("no trees, or tree and feature lists of different lengths")
    for k, (est, feats) in enumerate(zip(estimators, features)):
        feats = np.asarray(feats)
        if feats.ndim != 1 or ((feats < 0) | (feats >= n_inputs)).any():
            raise bad(f"tree {k} uses inputs out of range")
        tree = est.tree_
        n = tree.node_count
        left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
        feature = np.asarray(tree.feature)
        if n < 1 or not (len(left) == len(right) == len(feature) == n):
            raise bad(f"tree {k} has inconsistent node arrays")
        nodes = np.arange(n)
        leaf = left == -1
        if ((right == -1) != leaf).any():
            raise bad(f"tree {k} has half-leaf nodes")
        inner = ~leaf
        if ((left[inner] <= nodes[inner]) | (left[inner] >= n)
                | (right[inner] <= nodes[inner]) | (right[inner] >= n)).any():
            raise bad(f"tree {k} has child indices out of range")
        width = est.n_features_in_
        if tree.n_features != width or ((feature[inner] < 0) | (feature[inner] >= width)).any():
            raise bad(f"tree {k} splits on features it does not have")
        if len(forest._decision_path_lengths[k]) != n \
                or len(forest._average_path_length_per_tree[k]) != n:
            raise bad(f"tree {k} path length tables do not match its nodes")


class IsolationForestDetector:
    """Scores batches with a trained, calibrated IsolationForest; it does not learn online.

    Not ready for identities with fewer than ``min_history`` baseline events.
    """

    def __init__(self, model_path: str | Path, name: str = "iforest", threshold: float = 0.999,
                 high_threshold: float = 0.9999, min_history: int = 50) -> None:
        self.name = name
        self.threshold = threshold
        self.high_threshold = high_threshold
        self.min_history = min_history
        self.model_path = Path(model_path)
        self.model = load_model(self.model_path)

    def score_then_learn(self, batch: Sequence[FeatureVector], exclude: np.ndarray,
                         values: np.ndarray | None = None) -> ScoreBatch:
        if values is None:
            values = np.array([fv.values for fv in batch], dtype=np.float64).reshape(
                len(batch), len(FEATURE_NAMES))
        scores = self.model.score(values)
        ready = values[:, _HISTORY] >= self.min_history
        return ScoreBatch(self.name, scores, ready, ready & (scores >= self.threshold))

    def checkpoint(self) -> None:
        return None

    def restore(self, checkpoint: object) -> None:
        pass

    def state_dict(self) -> dict:
        return {"sha256": self.model.sha256}

    def load_state_dict(self, state: dict) -> None:
        # The model comes from its (checked) file, not from the snapshot. A different sha256
        # means the model was retrained since the snapshot; that is a deployment, not
        # corruption, so the identity baselines in the snapshot are kept.
        if not isinstance(state, dict) or "sha256" not in state:
            raise ModelIntegrityError(f"{self.name}: the snapshot holds no isolationforest "
                                      "state for this detector (was the config changed?)")
        saved = state["sha256"]
        if saved != self.model.sha256:
            log.warning("%s: snapshot was taken with model sha256 %s, now scoring with %s (%s)",
                        self.name, saved, self.model.sha256, self.model_path)
