"""models.baseline: river-exact rolling medians, score then learn, checkpoints, snapshots."""

from __future__ import annotations

import doctest
import math
from collections import deque

import msgspec
import numpy as np
import pytest
from river import stats

import secretscope.models.baseline as baseline_module
from secretscope.models.baseline import DEFAULT_MEASURES, RobustBaselineDetector
from secretscope.models.registry import build_detectors
from secretscope.config import RobustBaselineSettings, load_settings
from secretscope.errors import ConfigError
from secretscope.features import FEATURE_NAMES, INDEX, FeatureVector
from tests.helpers import make_event

N_FEATURES = len(FEATURE_NAMES)
MEASURES = ("requests_count_1h", "secrets_distinct_1h", "denied_count_5m")


def fv(identity: str, ts: float, **measures: float) -> FeatureVector:
    values = [0.0] * N_FEATURES
    for name, value in measures.items():
        values[INDEX[name]] = float(value)
    return FeatureVector(make_event(identity=identity, ts=ts), "k8s-prod", tuple(values))


def run(det, rows, exclude=None, batch=256):
    """Feed rows in micro-batches the way the runner does (values matrix passed)."""
    exclude = np.zeros(len(rows), bool) if exclude is None else exclude
    out = []
    for pos in range(0, len(rows), batch):
        part = rows[pos:pos + batch]
        values = np.array([r.values for r in part], dtype=np.float64)
        out.append(det.score_then_learn(part, exclude[pos:pos + batch], values))
    if not out:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)
    return (np.concatenate([o.scores for o in out]), np.concatenate([o.ready for o in out]),
            np.concatenate([o.fired for o in out]))


def stream(n=3000, identities=12, hours=150, seed=0):
    """Several identities, each with its own level, rows in event-time order with some disorder
    (late rows), occasional bursts, and a random exclude mask."""
    rng = np.random.default_rng(seed)
    ids = [f"entity:svc-{k}" for k in range(identities)]
    level = rng.uniform(1, 60, size=identities)
    ts = np.sort(rng.uniform(0, hours * 3600.0, size=n)) + 1_770_000_000.0
    late = rng.random(n) < 0.03
    ts[late] -= rng.uniform(0, 5400, size=int(late.sum()))
    who = rng.integers(0, identities, size=n)
    burst = rng.random(n) < 0.01
    rows = []
    for i in range(n):
        k = who[i]
        mult = 30.0 if burst[i] else 1.0
        rows.append(fv(ids[k], float(ts[i]),
                       requests_count_1h=float(rng.poisson(level[k] * mult)),
                       secrets_distinct_1h=float(rng.poisson(level[k] / 4 * mult)),
                       denied_count_5m=float(rng.poisson(0.2 * mult)),
                       requests_count_1m=float(rng.poisson(5))))
    return rows, rng.random(n) < 0.05


class RiverReference:
    """The detector written row by row: river RollingQuantile medians of hourly peaks (and of
    the deviations from them), score_one then learn_one per row."""

    def __init__(self, measures, window_hours, min_hours, threshold, z_floor, z_scale):
        self.measures, self.w, self.min_hours = measures, window_hours, min_hours
        self.threshold, self.z_floor, self.z_scale = threshold, z_floor, z_scale
        self.ids = {}

    def _state(self, identity):
        if identity not in self.ids:
            self.ids[identity] = {"open": None, "peak": None, "ring": deque(maxlen=self.w),
                                  "med_log": [stats.RollingQuantile(0.5, self.w)
                                              for _ in self.measures],
                                  "med_raw": [stats.RollingQuantile(0.5, self.w)
                                              for _ in self.measures]}
        return self.ids[identity]

    def baseline(self, st):
        """(median, MAD) per measure on the log1p and raw scales, from river quantiles."""
        out = []
        for k in range(len(self.measures)):
            raw = [float(h[k]) for h in st["ring"]]
            logs = [float(np.log1p(x)) for x in raw]
            med_log, med_raw = st["med_log"][k].get(), st["med_raw"][k].get()
            mads = []
            for xs, med in ((logs, med_log), (raw, med_raw)):
                dev = stats.RollingQuantile(0.5, self.w)
                for x in xs:
                    dev.update(abs(x - med))
                mads.append(dev.get())
            out.append((med_log, mads[0], med_raw, mads[1]))
        return out

    def score_then_learn_one(self, row, exclude):
        st = self._state(row.event.identity)
        hour = math.floor(row.event.ts / 3600.0)
        if st["open"] is None or hour > st["open"]:
            if st["peak"] is not None:
                peak = [float(np.float32(p)) for p in st["peak"]]  # stored as float32
                st["ring"].append(peak)
                for k, p in enumerate(peak):
                    st["med_log"][k].update(float(np.log1p(p)))
                    st["med_raw"][k].update(p)
            st["open"], st["peak"] = hour, None
        obs = [max(row[m], 0.0) for m in self.measures]
        score = 0.0
        if st["ring"]:
            z = max((float(np.log1p(o)) - med) / (1.4826 * mad + self.z_floor)
                    for o, (med, mad, _, _) in zip(obs, self.baseline(st)))
            score = -math.expm1(-max(z, 0.0) / self.z_scale)
        ready = len(st["ring"]) >= self.min_hours
        fired = ready and score >= self.threshold
        if not exclude and not fired:
            st["peak"] = obs if st["peak"] is None else [max(a, b) for a, b in
                                                         zip(st["peak"], obs)]
        return score, ready, fired


def test_docstring_example():
    assert doctest.testmod(baseline_module).failed == 0


@pytest.mark.parametrize("batch", [1, 7, 256, 5000])
def test_same_scores_as_river_reference(batch):
    rows, exclude = stream(n=1500, hours=120, seed=batch)
    params = dict(window_hours=9, min_hours=4, threshold=0.9, z_floor=0.3, z_scale=2.0)
    ref = RiverReference(MEASURES, **params)
    expected = np.array([ref.score_then_learn_one(r, x) for r, x in zip(rows, exclude)])
    det = RobustBaselineDetector(measures=MEASURES, **params)
    scores, ready, fired = run(det, rows, exclude, batch)
    assert fired.sum() > 5 and ready.sum() > len(rows) // 2  # the stream exercises both
    np.testing.assert_allclose(scores, expected[:, 0], rtol=1e-12, atol=1e-15)
    assert np.array_equal(ready, expected[:, 1].astype(bool))
    assert np.array_equal(fired, expected[:, 2].astype(bool))
    # Medians are river's RollingQuantile bit for bit; MADs are its median of the deviations.
    for identity, st in ref.ids.items():
        slot = det.identities_[identity]
        raw_mad = {e.measure: e.mad for e in det.explain(identity, [0.0] * N_FEATURES)}
        got = np.array([det.med_log_[slot], det.mad_log_[slot], det.med_raw_[slot],
                        [raw_mad.get(m, 0.0) for m in MEASURES]]).T
        want = np.array(ref.baseline(st), dtype=np.float64) if st["ring"] else np.zeros_like(got)
        assert np.array_equal(got, want)


def test_burst_does_not_raise_its_own_baseline():
    det = RobustBaselineDetector(measures=MEASURES, min_hours=24)
    t0 = 1_770_000_000.0 // 3600 * 3600
    quiet = [fv("a", t0 + h * 3600 + m * 600, requests_count_1h=10 + (m % 3), secrets_distinct_1h=3)
             for h in range(30) for m in range(6)]
    run(det, quiet)
    slot = det.identities_["a"]
    median_before = det.med_raw_[slot].copy()
    # Hour 30: a burst climbing to 400 requests/h, then back to normal within the same hour.
    burst_hour = t0 + 30 * 3600
    counts = [11, 30, 120, 400, 400, 12]
    rows = [fv("a", burst_hour + i * 60, requests_count_1h=c, secrets_distinct_1h=3)
            for i, c in enumerate(counts)]
    sb = det.score_then_learn(rows, np.zeros(len(rows), bool))
    assert sb.ready.all()
    assert sb.fired.tolist() == [False, False, True, True, True, False]
    assert np.array_equal(det.med_raw_[slot], median_before)  # nothing folds inside the hour
    # Closing the hour folds the peak of the learned rows only (30, not the burst's 400).
    det.score_then_learn([fv("a", burst_hour + 3600, requests_count_1h=10)], np.zeros(1, bool))
    newest = det.window("a")[-1]
    assert newest[MEASURES.index("requests_count_1h")] == 30.0
    # The burst still fires an hour later: its baseline did not move towards it.
    again = det.score_then_learn([fv("a", burst_hour + 3700, requests_count_1h=400)],
                                 np.zeros(1, bool))
    assert again.fired.tolist() == [True]


def test_excluded_rows_are_not_learned():
    det = RobustBaselineDetector(measures=("requests_count_1h",), min_hours=1, window_hours=3)
    rows = [fv("a", 3600.0 * h, requests_count_1h=c) for h, c in enumerate([5, 900, 7, 0])]
    run(det, rows, exclude=np.array([False, True, False, False]), batch=1)
    assert det.window("a")[:, 0].tolist() == [5.0, 7.0]  # hour 1 had no learns


def test_warm_up_until_min_hours():
    det = RobustBaselineDetector(measures=("requests_count_1h",), min_hours=5)
    rows = [fv("a", 3600.0 * h + 5, requests_count_1h=10) for h in range(5)]
    rows.append(fv("a", 3600.0 * 5 + 5, requests_count_1h=10_000))
    scores, ready, fired = run(det, rows[:5], batch=1)
    assert not ready.any() and not fired.any()
    assert scores[0] == 0.0  # no completed hour: no score at all
    spike = fv("a", 3600.0 * 4 + 9, requests_count_1h=10_000)
    sb = det.score_then_learn([spike], np.zeros(1, bool))
    assert not sb.ready[0] and not sb.fired[0] and sb.scores[0] > 0.99  # scored, may not fire
    sb = det.score_then_learn(rows[5:], np.zeros(1, bool))
    assert sb.ready[0] and sb.fired[0]


def test_explanations_name_the_measure_that_drove_the_score():
    det = RobustBaselineDetector(measures=MEASURES, min_hours=3)
    for h, c in enumerate([10, 12, 11, 14, 12]):
        det.score_then_learn([fv("a", 3600.0 * h, requests_count_1h=c, secrets_distinct_1h=2)],
                             np.zeros(1, bool))
    rows = [fv("b", 3600.0 * 5), fv("a", 3600.0 * 5, requests_count_1h=340, secrets_distinct_1h=2)]
    sb = det.score_then_learn(rows, np.zeros(2, bool))
    assert sb.fired.tolist() == [False, True]
    top = det.explain_row(1)[0]
    assert (top.measure, top.observed, top.median, top.mad) == ("requests_count_1h", 340, 12, 1)
    assert top.text() == "requests_count_1h = 340, usual median 12 (MAD 1)"
    assert det.last_top_[1] == MEASURES.index("requests_count_1h")
    assert det.explain("a", rows[1].values) == det.explain_row(1)
    assert det.explain("nobody", rows[1].values) == []


def test_checkpoint_restore_is_exact():
    rows, exclude = stream(n=2000, identities=10, hours=60, seed=3)
    det = RobustBaselineDetector(measures=MEASURES, window_hours=12, min_hours=4, threshold=0.9)
    run(det, rows[:1200], exclude[:1200])
    before = det.state_dict()
    token = det.checkpoint()
    # The tail brings new identities and closes hours; some of it is learned.
    tail = rows[1200:] + [fv("entity:new", rows[-1].event.ts + 7200, requests_count_1h=3)]
    ex = np.append(exclude[1200:], False)
    first = run(det, tail, ex, batch=len(tail))
    assert det.state_dict() != before
    det.restore(token)
    assert det.state_dict() == before
    assert "entity:new" not in det.identities_
    second = run(det, tail, ex, batch=len(tail))
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    # ... and the same as a detector that never checkpointed.
    fresh = RobustBaselineDetector(measures=MEASURES, window_hours=12, min_hours=4, threshold=0.9)
    run(fresh, rows[:1200], exclude[:1200])
    assert all(np.array_equal(a, b) for a, b in zip(run(fresh, tail, ex, len(tail)), second))
    with pytest.raises(ValueError):
        det.restore((token[0] - 1, 0))


def test_state_dict_round_trip_gives_identical_scores():
    rows, exclude = stream(n=2500, identities=15, hours=80, seed=5)
    kwargs = dict(measures=MEASURES, window_hours=10, min_hours=3, threshold=0.9)
    det = RobustBaselineDetector(**kwargs)
    run(det, rows[:1500], exclude[:1500])
    # Plain types only: it must survive msgpack like secretscope.snapshot does.
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(det.state_dict()))
    loaded = RobustBaselineDetector(**kwargs)
    loaded.load_state_dict(state)
    assert loaded.state_dict() == det.state_dict()
    tail, ex = rows[1500:], exclude[1500:]
    for a, b in zip(run(det, tail, ex), run(loaded, tail, ex)):
        assert np.array_equal(a, b)
    assert loaded.state_dict() == det.state_dict()
    with pytest.raises(ValueError, match="measures"):
        RobustBaselineDetector(measures=("requests_count_1h",)).load_state_dict(state)


@pytest.mark.parametrize("batch", [1, 300])
def test_windows_moving_through_every_pool_score_as_river_does(batch):
    """Windows start 8 hours wide, move to 32 and then to window_hours as they fill, and wrap
    there: the scores and baselines stay river's throughout."""
    rows, exclude = stream(n=2400, identities=4, hours=200, seed=11)
    params = dict(window_hours=40, min_hours=4, threshold=0.9, z_floor=0.3, z_scale=2.0)
    ref = RiverReference(MEASURES, **params)
    expected = np.array([ref.score_then_learn_one(r, x) for r, x in zip(rows, exclude)])
    det = RobustBaselineDetector(measures=MEASURES, **params)
    assert det.widths_ == (0, 8, 32, 40)
    scores, ready, fired = run(det, rows, exclude, batch)
    np.testing.assert_allclose(scores, expected[:, 0], rtol=1e-12, atol=1e-15)
    assert np.array_equal(fired, expected[:, 2].astype(bool)) and fired.sum() > 5
    assert set(det.pool_[:4].tolist()) == {3} and set(det.count_[:4].tolist()) == {40}
    assert det.used_[1:] == [4, 4, 4]
    for identity, st in ref.ids.items():
        assert np.array_equal(det.window(identity), np.array(st["ring"], dtype=np.float32))
        slot = det.identities_[identity]
        med_log = [q.get() for q in st["med_log"]]
        assert det.med_log_[slot].tolist() == med_log


def test_restore_undoes_a_move_to_the_next_pool():
    det = RobustBaselineDetector(measures=("requests_count_1h",), window_hours=20, min_hours=2)
    rows = [fv("a", 3600.0 * h, requests_count_1h=10 + h % 3) for h in range(9)]
    run(det, rows, batch=1)
    assert (det.pool_[0], det.count_[0]) == (1, 8)  # full: the next close moves it
    before, used = det.state_dict(), list(det.used_)
    token = det.checkpoint()
    tail = [fv("a", 3600.0 * 9, requests_count_1h=11), fv("b", 3600.0 * 9, requests_count_1h=4),
            fv("b", 3600.0 * 10, requests_count_1h=4)]
    first = run(det, tail, batch=3)
    assert det.pool_[0] == 2 and det.used_ == [0, 2, 1]
    det.restore(token)
    assert det.state_dict() == before and det.used_ == used and det.pool_[0] == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, run(det, tail, batch=3)))


def test_identities_with_few_hours_hold_small_windows():
    """10,000 identities seen in 3 hours each: their windows take 128 B each (8 hours of 4
    float32 measures, with room to double), not a week's 2.7 KB."""
    det = RobustBaselineDetector()
    rows = [fv(f"entity:{k}", 3600.0 * h + k % 3000, requests_count_1h=5)
            for h in range(3) for k in range(10_000)]
    run(det, rows, batch=2048)
    assert det.count_[:10_000].tolist() == [2] * 10_000
    held = sum(w.nbytes for w in det.windows_) / 10_000
    assert held <= 2 * 8 * len(DEFAULT_MEASURES) * 4, held


def test_config_builds_the_detector(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detectors:\n  - {type: robustbaseline, min_hours: 12,"
                    " measures: [requests_count_1h, secrets_distinct_24h]}\n")
    settings = load_settings(path)
    [det] = build_detectors(settings.detectors)
    assert isinstance(det, RobustBaselineDetector) and det.name == "baseline"
    assert det.measures == ("requests_count_1h", "secrets_distinct_24h") and det.min_hours == 12
    assert RobustBaselineSettings(type="robustbaseline").measures == DEFAULT_MEASURES


@pytest.mark.parametrize("text, key, words", [
    ("{type: robustbaseline, measures: [requests_count_1h, reqs_1h]}",
     "detectors.0.robustbaseline.measures", "'reqs_1h'"),
    ("{type: robustbaseline, measures: []}", "detectors.0.robustbaseline.measures", "at least"),
    ("{type: robustbaseline, min_hours: 200}", "detectors.0.robustbaseline", "min_hours"),
    ("{type: robustbaseline, window_hours: 1}", "detectors.0.robustbaseline.window_hours", ""),
    ("{type: robustbaseline, threshold: 1.5}", "detectors.0.robustbaseline.threshold", ""),
    ("{type: robustbaseline, z_flor: 1}", "detectors.0.robustbaseline.z_flor", ""),
])
def test_bad_config_names_the_key(tmp_path, text, key, words):
    path = tmp_path / "bad.yaml"
    path.write_text(f"detectors: [{text}]\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value) and words in str(info.value)


def test_constructor_rejects_unknown_measures():
    with pytest.raises(ValueError, match="reqs"):
        RobustBaselineDetector(measures=("reqs",))
    with pytest.raises(ValueError, match="min_hours"):
        RobustBaselineDetector(window_hours=10, min_hours=11)


def test_in_the_pipeline_with_snapshots():
    """Wired through the runner (checkpoints, restores) and secretscope.snapshot as configured."""
    from datetime import timedelta

    from secretscope import snapshot
    from secretscope.runner import Pipeline
    from tests.helpers import T0

    base = load_settings()
    settings = base.model_copy(update={"detectors": base.detectors + (
        RobustBaselineSettings(type="robustbaseline", min_hours=6),)})
    history = [make_event(at=T0 + i * timedelta(minutes=5), path=f"secret/data/team/s{i % 3}")
               for i in range(12 * 24)]
    start = history[-1].time + timedelta(minutes=1)
    burst = [make_event(at=start + i * timedelta(seconds=2), path=f"secret/data/other/k{i}")
             for i in range(300)]
    p = Pipeline(settings)
    for i in range(0, len(history), 64):
        p.process_batch(history[i:i + 64])
    det = p.detectors[-1]
    assert isinstance(det, RobustBaselineDetector) and det.count_[0] >= 6
    blob = snapshot.dump(p)
    copy = Pipeline(settings)
    snapshot.load(copy, blob)
    assert copy.detectors[-1].state_dict() == det.state_dict()
    findings = [f for i in range(0, len(burst), 64) for f in p.process_batch(burst[i:i + 64])]
    again = [f for i in range(0, len(burst), 64) for f in copy.process_batch(burst[i:i + 64])]
    assert [f.id for f in findings] == [f.id for f in again]
    assert any("baseline" in f.detectors for f in findings)
