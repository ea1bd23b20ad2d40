"""The river-free padded tree builder draws the very trees river draws, so Half-Space Trees
scores stay river's while start-up skips importing river."""

import random
import subprocess
import sys

import numpy as np
import pytest
from river.tree.padded import PaddedBranch as RiverBranch
from river.tree.padded import make_padded_tree as river_make_padded_tree

from secretscope.models.hst import HalfSpaceTrees
from secretscope.models.padded import PaddedBranch, make_padded_tree


def _shape(node, branch_type):
    """The tree as nested tuples: (feature, threshold, left, right), or None for a leaf."""
    if not isinstance(node, branch_type):
        return None
    left, right = node.children
    return (node.feature, node.threshold, _shape(left, branch_type), _shape(right, branch_type))


def _forest(builder, branch_type, feats, n_trees, height, seed):
    rng = random.Random(seed)
    return [_shape(builder(limits={f: (0.0, 1.0) for f in sorted(feats)}, height=height,
                           padding=0.15, rng=rng, r_mass=0, l_mass=0), branch_type)
            for _ in range(n_trees)]


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 + 7])
@pytest.mark.parametrize("n_trees,height,n_feats", [(1, 0, 1), (3, 1, 2), (10, 6, 9),
                                                    (25, 8, 23)])
def test_same_trees_as_river(seed, n_trees, height, n_feats):
    feats = [f"f{i:02d}" for i in range(n_feats)]
    ours = _forest(make_padded_tree, PaddedBranch, feats, n_trees, height, seed)
    rivers = _forest(river_make_padded_tree, RiverBranch, feats, n_trees, height, seed)
    assert ours == rivers


def test_unequal_limits_weight_the_feature_draw_like_river():
    limits = {"a": (0.0, 5.0), "b": (-1.0, 0.5), "c": (2.0, 2.25)}
    ours = _shape(make_padded_tree(dict(limits), 7, 0.1, random.Random(9), l_mass=0, r_mass=0),
                  PaddedBranch)
    rivers = _shape(river_make_padded_tree(dict(limits), 7, 0.1, random.Random(9), l_mass=0,
                                           r_mass=0), RiverBranch)
    assert ours == rivers


@pytest.mark.parametrize("seed", [3, 11])
def test_hst_arrays_match_a_forest_built_by_river(seed):
    feats = [f"x{i}" for i in range(7)]
    hst = HalfSpaceTrees(feats, n_trees=6, height=5, window_size=50, seed=seed)
    rivers = _forest(river_make_padded_tree, RiverBranch, feats, 6, 5, seed)
    col = {f: i for i, f in enumerate(feats)}
    for t, root in enumerate(rivers):
        stack = [(root, 0)]
        while stack:
            node, idx = stack.pop()
            if node is None:
                assert hst.feature_[t, idx] == -1
                continue
            feature, threshold, left, right = node
            assert hst.feature_[t, idx] == col[feature]
            assert hst.threshold_[t, idx] == threshold
            stack += [(left, 2 * idx + 1), (right, 2 * idx + 2)]
    assert np.isnan(hst.threshold_[hst.feature_ < 0]).all()


def test_building_a_forest_does_not_import_river():
    code = ("import sys; from secretscope.models.hst import HalfSpaceTrees; "
            "HalfSpaceTrees(['a', 'b'], n_trees=3, height=4, window_size=10, seed=1); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('river', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
