"""River's padded random trees (``river.tree.padded``), without importing river.

Half-Space Trees draw their structure with ``make_padded_tree``. Importing it from river runs
``river.tree``'s package ``__init__``, which pulls in scipy and scikit-learn (about 0.9 s and
110 MiB at start-up) for a function of thirty lines. This is the same function, drawing from
the rng in the same order, so a seeded forest is node for node the one river builds
(``tests/test_padded_trees.py`` compares them for several seeds, sizes and feature sets).
"""

# Adapted from river 0.26.1, river/tree/padded.py, under river's licence:
#
# BSD 3-Clause License
#
# Copyright (c) 2020, the river developers
# All rights reserved.
#
# Redistribution and use in source and binary forms, with or without
# modification, are permitted provided that the following conditions are met:
#
# 1. Redistributions of source code must retain the above copyright notice, this
#    list of conditions and the following disclaimer.
#
# 2. Redistributions in binary form must reproduce the above copyright notice,
#    this list of conditions and the following disclaimer in the documentation
#    and/or other materials provided with the distribution.
#
# 3. Neither the name of the copyright holder nor the names of its
#    contributors may be used to endorse or promote products derived from
#    this software without specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
# AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
# IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
# DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
# FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
# SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
# CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
# OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
# OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.


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
