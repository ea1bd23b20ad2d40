"""Tests for models.hst: the numpy HalfSpaceTrees must reproduce river's scores exactly."""

from __future__ import annotations

import doctest
import itertools
import pickle

import numpy as np
import pytest
from river import anomaly

import secretscope.models.hst as hst_module
from secretscope.models.hst import HalfSpaceTrees

# Deliberately not in sorted order: columns of X follow this order, river sorts the names.
FEATURES = ["user", "bytes", "path_depth", "hour", "method"]

CONFIGS = [
    # (n_trees, height, window_size, seed, n_rows)
    (10, 8, 250, 42, 2000),
    (10, 8, 250, 7, 2000),
    (3, 3, 7, 1, 2500),
    (3, 3, 7, 123, 2500),
]

BATCH_SCHEDULES = {
    "1": [1],
    "7": [7],
    "250": [250],
    "333": [333],
    "whole": [10**9],
    "mixed": [1, 7, 250, 333, 3, 64, 2],
}


def make_stream(n: int, seed: int, n_features: int = len(FEATURES)) -> np.ndarray:
    """Clusters in [0, 1] plus ~2% outliers, some of them outside [0, 1]."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.15, 0.85, size=(4, n_features))
    labels = rng.integers(0, len(centers), size=n)
    X = centers[labels] + rng.normal(0.0, 0.04, size=(n, n_features))
    X = np.clip(X, 0.0, 1.0)
    out = rng.random(n) < 0.02
    X[out] = rng.uniform(-0.2, 1.2, size=(int(out.sum()), n_features))
    return X


def river_run(X, n_trees, height, window_size, seed, threshold=None, skip=None):
    """Sequential reference: score_one then (unless excluded) learn_one per row."""
    model = anomaly.HalfSpaceTrees(
        n_trees=n_trees, height=height, window_size=window_size, seed=seed
    )
    scores = np.empty(len(X))
    learned = np.zeros(len(X), dtype=bool)
    for i, row in enumerate(X):
        x = dict(zip(FEATURES, row.tolist()))
        ready = not model._first_window
        s = float(model.score_one(x))
        scores[i] = s
        excluded = (skip is not None and skip[i]) or (
            threshold is not None and ready and s >= threshold
        )
        if not excluded:
            model.learn_one(x)
            learned[i] = True
    return scores, learned


def batched_run(model, X, schedule, threshold=None, skip=None):
    scores, learned = [], []
    pos = 0
    for size in itertools.cycle(schedule):
        if pos >= len(X):
            break
        sl = slice(pos, pos + size)
        s, m = model.score_then_learn(
            X[sl], skip=None if skip is None else skip[sl], threshold=threshold
        )
        assert s.dtype == np.float64 and m.dtype == bool
        assert s.shape == m.shape == (len(X[sl]),)
        scores.append(s)
        learned.append(m)
        pos += size
    return np.concatenate(scores), np.concatenate(learned)


_REF_CACHE: dict = {}


def reference(cfg, threshold=None, with_skip=False):
    key = (cfg, threshold, with_skip)
    if key not in _REF_CACHE:
        n_trees, height, window_size, seed, n = cfg
        X = make_stream(n, seed)
        skip = np.random.default_rng(seed + 1).random(n) < 0.1 if with_skip else None
        scores, learned = river_run(X, n_trees, height, window_size, seed, threshold, skip)
        _REF_CACHE[key] = (X, skip, scores, learned)
    return _REF_CACHE[key]


def new_model(cfg):
    n_trees, height, window_size, seed, _ = cfg
    return HalfSpaceTrees(FEATURES, n_trees=n_trees, height=height, window_size=window_size, seed=seed)


def assert_scores_equal(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"T{c[0]}h{c[1]}w{c[2]}s{c[3]}")
def test_score_then_learn_matches_river(cfg):
    X, _, want, _ = reference(cfg)
    for name, schedule in BATCH_SCHEDULES.items():
        got, learned = batched_run(new_model(cfg), X, schedule)
        assert learned.all(), name
        assert_scores_equal(got, want)
    assert np.count_nonzero(want) > len(X) // 2  # the comparison is not vacuous


@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=lambda c: f"T{c[0]}h{c[1]}w{c[2]}s{c[3]}")
@pytest.mark.parametrize("with_skip", [False, True], ids=["threshold", "threshold+skip"])
def test_threshold_and_skip_exclusion_matches_river(cfg, with_skip):
    X, _, base_scores, _ = reference(cfg)
    ready_scores = base_scores[cfg[2] :]
    threshold = float(np.quantile(ready_scores, 0.9))
    X, skip, want, want_learned = reference(cfg, threshold, with_skip)
    # Exclusions must happen, otherwise the test says nothing.
    assert 0 < (~want_learned).sum() < len(X) // 2
    for schedule in BATCH_SCHEDULES.values():
        got, learned = batched_run(new_model(cfg), X, schedule, threshold=threshold, skip=skip)
        assert_scores_equal(got, want)
        np.testing.assert_array_equal(learned, want_learned)


@pytest.mark.parametrize(
    "n_trees,height,window_size", [(2, 0, 5), (4, 1, 1), (5, 5, 3)], ids=str
)
def test_edge_shapes_match_river(n_trees, height, window_size):
    cfg = (n_trees, height, window_size, 3, 300)
    X = make_stream(300, 9)
    want, _ = river_run(X, n_trees, height, window_size, 3)
    got, _ = batched_run(new_model(cfg), X, [1, 4, 50])
    assert_scores_equal(got, want)


def test_learn_many_and_score_many_match_river():
    cfg = CONFIGS[0]
    n_trees, height, window_size, seed, _ = cfg
    X = make_stream(900, 5)
    probe = make_stream(200, 6)
    river_model = anomaly.HalfSpaceTrees(
        n_trees=n_trees, height=height, window_size=window_size, seed=seed
    )
    model = new_model(cfg)
    for chunk in (X[:1], X[1:300], X[300:301], X[301:900]):  # pivots mid-batch
        for row in chunk:
            river_model.learn_one(dict(zip(FEATURES, row.tolist())))
        model.learn_many(chunk)
        want = [float(river_model.score_one(dict(zip(FEATURES, r.tolist())))) for r in probe]
        assert_scores_equal(model.score_many(probe), np.array(want))
        assert model.learns_until_swap == window_size - river_model.counter


def test_tree_structure_matches_river():
    model = HalfSpaceTrees(FEATURES, n_trees=3, height=4, window_size=10, seed=11)
    river_model = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=10, seed=11)
    river_model.learn_one({f: 0.5 for f in FEATURES})
    n_nodes = 2 ** 5 - 1
    assert model.feature_.shape == model.threshold_.shape == (3, n_nodes)
    for t, root in enumerate(river_model.trees):
        stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if hasattr(node, "threshold"):
                assert FEATURES[model.feature_[t, i]] == node.feature
                assert model.threshold_[t, i] == node.threshold
                stack += [(node.children[0], 2 * i + 1), (node.children[1], 2 * i + 2)]
            else:
                assert i >= n_nodes // 2 and model.feature_[t, i] == -1


# --------------------------------------------------------------------------- window bookkeeping


def test_ready_and_learns_until_swap():
    X = make_stream(40, 2)
    model = HalfSpaceTrees(FEATURES, n_trees=2, height=3, window_size=10, seed=0)
    assert (model.features, model.n_trees, model.height, model.window_size, model.seed) == (
        FEATURES, 2, 3, 10, 0,
    )
    assert not model.ready and model.learns_until_swap == 10
    assert np.array_equal(model.score_many(X), np.zeros(len(X)))

    model.learn_many(X[:4])
    assert not model.ready and model.learns_until_swap == 6

    # Skipped rows do not count; a threshold is ignored while not ready (scores are 0.0 then).
    skip = np.zeros(8, dtype=bool)
    skip[:3] = True
    scores, learned = model.score_then_learn(X[4:12], skip=skip, threshold=0.0)
    assert np.array_equal(scores, np.zeros(8))
    assert np.array_equal(learned, ~skip)
    assert not model.ready and model.learns_until_swap == 1

    scores, learned = model.score_then_learn(X[12:15], threshold=0.0)
    # Row 12 completes the first window; rows 13, 14 are scored (>= 0.0) and thus not learnt.
    assert scores[0] == 0.0 and (scores[1:] > 0).all()
    assert learned.tolist() == [True, False, False]
    assert model.ready and model.learns_until_swap == 10

    model.learn_many(X[15:40])  # 25 rows: two more pivots at 10 and 20, then 5 into the window
    assert model.ready and model.learns_until_swap == 5

    empty_scores, empty_learned = model.score_then_learn(np.empty((0, len(FEATURES))))
    assert empty_scores.shape == empty_learned.shape == (0,)
    assert model.learns_until_swap == 5


def test_input_validation():
    model = HalfSpaceTrees(FEATURES, n_trees=2, height=2, window_size=5, seed=0)
    with pytest.raises(ValueError):
        model.score_many(np.zeros((3, len(FEATURES) + 1)))
    with pytest.raises(ValueError):
        model.score_then_learn(np.zeros((3, len(FEATURES))), skip=np.zeros(2, dtype=bool))
    with pytest.raises(ValueError):
        HalfSpaceTrees(["a", "a"])


# --------------------------------------------------------------------------- persistence


def test_state_dict_round_trip():
    cfg = (10, 8, 250, 42, 0)
    X = make_stream(1400, 4)
    model = new_model(cfg)
    model.score_then_learn(X[:600])  # mid-window, after two pivots
    state = model.state_dict()
    restored = HalfSpaceTrees.from_state_dict(pickle.loads(pickle.dumps(state)))
    as_lists = HalfSpaceTrees.from_state_dict(
        {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()}
    )
    assert restored.learns_until_swap == model.learns_until_swap and restored.ready
    want_scores, want_learned = model.score_then_learn(X[600:], threshold=0.7)
    for other in (restored, as_lists):
        scores, learned = other.score_then_learn(X[600:], threshold=0.7)
        np.testing.assert_array_equal(scores, want_scores)
        np.testing.assert_array_equal(learned, want_learned)
        np.testing.assert_array_equal(other.r_mass_, model.r_mass_)
        np.testing.assert_array_equal(other.l_mass_, model.l_mass_)

    bad = dict(state)
    bad["l_mass"] = state["l_mass"].copy()
    bad["l_mass"][0, 0] += 1
    with pytest.raises(ValueError):
        HalfSpaceTrees.from_state_dict(bad)


# --------------------------------------------------------------------------- behaviour


def test_far_outlier_scores_higher_than_inliers():
    X = make_stream(1500, 8)
    X = X[(X >= 0).all(axis=1) & (X <= 1).all(axis=1)]
    model = HalfSpaceTrees(FEATURES, n_trees=10, height=8, window_size=250, seed=3)
    model.learn_many(X[:1000])
    inliers = model.score_many(X[1000:1200])
    outlier = model.score_many(np.array([[0.999, 0.001, 0.999, 0.001, 0.999]]))
    assert outlier[0] > np.quantile(inliers, 0.99)
    assert ((inliers >= 0) & (inliers <= 1)).all()


def test_module_doctests():
    result = doctest.testmod(hst_module)
    assert result.attempted > 0 and result.failed == 0


def test_checkpoint_restore_replays_identically():
    from secretscope.models.hst import HalfSpaceTrees as NumpyHST
    rng = np.random.default_rng(3)
    X = rng.random((900, 4))
    model = NumpyHST(["a", "b", "c", "d"], n_trees=5, height=4, window_size=50, seed=9)
    model.learn_many(X[:120])
    cp = model.checkpoint()
    first, _ = model.score_then_learn(X[120:700], threshold=0.6)  # crosses several pivots
    model.restore(cp)
    again, _ = model.score_then_learn(X[120:700], threshold=0.6)
    assert np.array_equal(first, again)
    model.restore(cp)
    model.restore(cp)  # a checkpoint can be restored more than once
    third, _ = model.score_then_learn(X[120:700], threshold=0.6)
    assert np.array_equal(first, third)
