"""Rules evaluated on a batch's feature matrix find exactly what they find one row at a time."""

from __future__ import annotations

import math

import numpy as np

from secretscope.config import load_settings
from secretscope.features import FEATURE_NAMES, INDEX, FeatureVector
from secretscope.models.rules import RuleSet, compile_rule, load_rules

from helpers import make_event


def test_the_default_rules_on_a_batch_match_one_row_at_a_time(tmp_path):
    from secretscope.features import FeatureExtractor
    from secretscope.segments import SegmentTable
    from secretscope.simulate import SimulationSpec, simulate
    from secretscope.sources.files import replay

    log = tmp_path / "fleet.log"
    simulate(SimulationSpec(days=3, seed=5, target_calls=9000), log, tmp_path / "labels.jsonl")

    settings = load_settings()
    rules = RuleSet(load_rules(settings.rules_dir()))
    fx = FeatureExtractor(SegmentTable((s.name, s.cidr) for s in settings.segments))
    vectors = []
    for e in replay([log]):
        fv = fx.observe(e)
        fx.learn(fv)
        vectors.append(fv)
    one = [rules.evaluate_one(fv) for fv in vectors]
    assert sum(map(bool, one)) >= 10, "too few rule hits: a weak test"
    for size in (1, 100, len(vectors)):
        batched = []
        for i in range(0, len(vectors), size):
            chunk = vectors[i:i + size]
            batched += rules.evaluate_batch(chunk, np.array([fv.values for fv in chunk]))
        assert batched == one, f"batch size {size}"


def _vector(**features) -> FeatureVector:
    values = [0.0] * len(FEATURE_NAMES)
    for name, v in features.items():
        values[INDEX[name]] = v
    return FeatureVector(make_event(), "office", tuple(values))


def test_threshold_clauses_at_their_bounds_and_nan():
    """gte, gt and lte exactly at, just beside, and NaN: the screen keeps what the predicate
    keeps, no more and no fewer."""
    doc = {"id": "t", "title": "t", "severity": "high", "reason": "T",
           "when": [{"field": "denied_count_5m", "gte": 3}, {"field": "idle_days", "gt": 2},
                    {"field": "denied_ratio_1h", "lte": 0.5}]}
    rules = RuleSet([compile_rule(doc, "t.yaml")])
    below, above = math.nextafter(2.0, -math.inf), math.nextafter(2.0, math.inf)
    rows = [_vector(denied_count_5m=d, idle_days=i, denied_ratio_1h=r)
            for d in (3.0, math.nextafter(3.0, -math.inf), float("nan"))
            for i in (below, 2.0, above, float("nan"))
            for r in (0.5, math.nextafter(0.5, math.inf), -math.inf, float("nan"))]
    one = [rules.evaluate_one(fv) for fv in rows]
    assert sum(map(bool, one)) == 2  # denied 3, idle just above 2, ratio 0.5 or -inf
    assert rules.evaluate_batch(rows, np.array([fv.values for fv in rows])) == one
