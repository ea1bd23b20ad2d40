"""River's padded random trees (``river.tree.padded``), without importing river.

Half-Space Trees draw their structure with ``make_padded_tree``. Importing it from river runs
``river.tree``'s package ``__init__``, which pulls in scipy and scikit-learn (about 0.9 s and
110 MiB at start-up) for a function of thirty lines. This is the same function, drawing from
the rng in the same order, so a seeded forest is node for node the one river builds
(``tests/test_padded_trees.py`` compares them for several seeds, sizes and feature sets).
"""

from __future__ import annotations

import random

__all__ = ["PaddedBranch", "PaddedLeaf", "make_padded_tree"]


class PaddedLeaf:
    __slots__ = ("l_mass", "r_mass")

    def __init__(self, l_mass=0, r_mass=0) -> None:
        self.l_mass = l_mass
        self.r_mass = r_mass


class PaddedBranch:
    __slots__ = ("children", "feature", "threshold", "l_mass", "r_mass")

    def __init__(self, left, right, feature, threshold, l_mass=0, r_mass=0) -> None:
        self.children = [left, right]
        self.feature = feature
        self.threshold = threshold
        self.l_mass = l_mass
        self.r_mass = r_mass


def make_padded_tree(limits, height, padding, rng=random, **node_params):
    """river's ``make_padded_tree``: the rng calls (``choices`` then ``uniform``, depth first,
    left before right) are the ones that fix the structure, so their order must not change."""
    if height == 0:
        return PaddedLeaf(**node_params)
    on = rng.choices(
        population=list(limits.keys()),
        weights=[limits[i][1] - limits[i][0] for i in limits],
    )[0]
    a, b = limits[on]
    at = rng.uniform(a + padding * (b - a), b - padding * (b - a))
    tmp = limits[on]
    limits[on] = (tmp[0], at)
    left = make_padded_tree(limits=limits, height=height - 1, padding=padding, rng=rng,
                            **node_params)
    limits[on] = tmp
    limits[on] = (at, tmp[1])
    right = make_padded_tree(limits=limits, height=height - 1, padding=padding, rng=rng,
                             **node_params)
    limits[on] = tmp
    return PaddedBranch(left=left, right=right, feature=on, threshold=at, **node_params)
