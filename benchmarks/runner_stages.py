"""Where the runner's time goes per call: rules, each detector, triage, store and glue.

    python benchmarks/runner_stages.py --calls 200000 --batch-size 256 --batch-size 2048

The simulated log is parsed once into memory. For each batch size, in the same run:

1. a features pass: the extractor alone, as the runner drives it (every event into the windows,
   then derive and learn per row, in batches);
2. the pipeline (default config, SQLite store with sampled feature history) over the same
   events, its per-batch stages timed by wrappers.

All times are CPU time (``time.process_time``): the machine is shared, and CPU time is what
other processes disturb least; each figure is the least of ``--repeat`` runs, and the glue is
worked out from those least figures. Only per-batch calls are wrapped, so the wrappers cost nothing
measurable. "runner glue" is the pipeline's time less the features pass and the timed stages:
it includes the features work the redo after a flagged row repeats, which the counters below
show (extractor learns, unlearns and derives, and rows detectors scored, per event; each is
1.000 when nothing is flagged).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

_clock = time.process_time


def simulated_log(calls: int, seed: int, cache: Path) -> Path:
    from secretscope.simulate import SimulationSpec, simulate

    path = cache / f"bench-{calls}-{seed}.log"
    if not path.exists():
        simulate(SimulationSpec(days=7, seed=seed, target_calls=calls), path,
                 cache / f"bench-{calls}-{seed}.labels.jsonl")
    return path


class Stages:
    """CPU seconds and calls per stage, filled by wrappers around the pipeline's parts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.rows: dict[str, int] = defaultdict(int)

    def wrap(self, obj, method: str, stage: str, rows_arg: int | None = None) -> None:
        inner = getattr(obj, method, None)
        if inner is None:
            return
        seconds, calls, rows = self.seconds, self.calls, self.rows

        def timed(*args, **kwargs):
            t = _clock()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[stage] += _clock() - t
                calls[stage] += 1
                if rows_arg is not None:
                    rows[stage] += len(args[rows_arg])

        setattr(obj, method, timed)


def instrument(pipeline, stages: Stages) -> None:
    for method in ("evaluate_batch",):
        stages.wrap(pipeline.rules, method, "rules (batch, in the pipeline)")
    for d in pipeline.detectors:
        stages.wrap(d, "score_then_learn", f"detector {d.name}", rows_arg=0)
        stages.wrap(d, "checkpoint", f"detector {d.name}")
        stages.wrap(d, "restore", f"detector {d.name}")
    stages.wrap(pipeline.triage, "decide", "triage")
    stages.wrap(pipeline.history, "record", "history + store")
    if pipeline.store is not None:
        for method in ("add_versions", "add_feature_history", "flush"):
            stages.wrap(pipeline.store, method, "history + store")


def features_pass(events: list, settings, batch_size: int,
                  keep: list | None = None) -> float:
    """CPU seconds of the extractor's work once per event, driven as the runner drives it;
    ``keep`` receives the feature vectors of the first 50,000 events."""
    from secretscope.features import FeatureExtractor
    from secretscope.segments import SegmentTable

    fx = FeatureExtractor(SegmentTable((s.name, s.cidr) for s in settings.segments),
                          ((e.name, e.paths) for e in settings.environments))
    t = _clock()
    for i in range(0, len(events), batch_size):
        chunk = events[i:i + batch_size]
        observe, derive, learn = fx.observe_windows, fx.derive, fx.learn
        windows = [observe(e) for e in chunk]
        if keep is not None and i < 50_000:
            fvs = [derive(e, w) for e, w in zip(chunk, windows)]  # learned below, untimed
            keep.extend(fvs)
            t -= _clock()
            for fv in fvs:
                learn(fv)
            t += _clock()
            continue
        for e, w in zip(chunk, windows):
            learn(derive(e, w))
    return _clock() - t


def rules_alone(vectors: list, settings, batch_size: int) -> dict[str, float]:
    """CPU microseconds per row of the rule set alone: one row at a time, and (where the
    rule set has it) a batch at a time on its feature matrix."""
    import numpy as np

    from secretscope.models.rules import RuleSet, load_rules

    rules = RuleSet(load_rules(settings.rules_dir()))
    per = 1e6 / len(vectors)
    t = _clock()
    for fv in vectors:
        rules.evaluate_one(fv)
    out = {"rules alone, one row at a time": (_clock() - t) * per}
    if hasattr(rules, "evaluate_batch"):
        chunks = [vectors[i:i + batch_size] for i in range(0, len(vectors), batch_size)]
        matrices = [np.array([fv.values for fv in c]) for c in chunks]
        t = _clock()
        for chunk, values in zip(chunks, matrices):
            rules.evaluate_batch(chunk, values)
        out["rules alone, a batch at a time"] = (_clock() - t) * per
    return out


def run(events: list, settings, batch_size: int) -> dict:
    # with the collector settings of Pipeline.run, which replay and run use
    from secretscope.runner import _fewer_collections

    with _fewer_collections():
        return _run(events, settings, batch_size)


def _run(events: list, settings, batch_size: int) -> dict:
    from secretscope.runner import Pipeline
    from secretscope.store import Store

    kept: list = []
    features = features_pass(events, settings, batch_size, kept)
    alone = rules_alone(kept, settings, batch_size)
    del kept
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        pipeline = Pipeline(settings, store=store)
        stages = Stages()
        instrument(pipeline, stages)
        versions = []
        total = _clock()
        for i in range(0, len(events), batch_size):
            versions += pipeline.process_batch(events[i:i + batch_size])
        versions += pipeline.finish()
        store.flush()
        total = _clock() - total
        store.close()
    n = len(events)
    per = 1e6 / n
    out = {"features (once per event)": features * per}
    out.update({stage: s * per for stage, s in sorted(stages.seconds.items())})
    out["runner glue"] = (total - features - sum(stages.seconds.values())) * per
    out["total process_batch"] = total * per
    out.update(alone)
    st = pipeline.stats
    counts = {  # NaN: a runner without these counters
        "learns per event": getattr(st, "learns", float("nan")) / n,
        "unlearns per event": getattr(st, "unlearns", float("nan")) / n,
        "derives per event": getattr(st, "derives", float("nan")) / n,
        "detector rows scored per event": getattr(st, "scored", float("nan")) / n,
        "finding versions": len(versions),
    }
    return {"us": out, "counts": counts,
            "versions": [(f.id, f.version, f.activity_id, f.severity_id) for f in versions]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch-size", type=int, action="append",
                    help="batch sizes to compare (default 256 and 2048)")
    ap.add_argument("--cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "secretscope-bench")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per batch size; each figure is the least of them")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    args.cache.mkdir(parents=True, exist_ok=True)
    sizes = args.batch_size or [256, 2048]

    from secretscope.config import load_settings
    from secretscope.sources.files import replay

    settings = load_settings()
    path = simulated_log(args.calls, args.seed, args.cache)
    t = time.perf_counter()
    events = list(replay([path]))
    print(f"{len(events):,} calls from {path} parsed in {time.perf_counter() - t:.1f}s")
    results = {}
    for _ in range(args.repeat):  # the least of each figure: what the work costs undisturbed
        for size in sizes:
            r = run(events, settings, size)
            best = results.setdefault(size, r)
            for stage, us in r["us"].items():
                best["us"][stage] = min(best["us"][stage], us)
    for r in results.values():
        us = r["us"]
        us["runner glue"] = us["total process_batch"] - us["features (once per event)"] - sum(
            v for s, v in us.items() if s.startswith(("rules (", "detector", "triage", "history")))
    stages = list(dict.fromkeys(s for r in results.values() for s in r["us"]))
    print(f"\nCPU microseconds per call, by batch size")
    print(f"{'stage':34s}" + "".join(f"{size:>10d}" for size in sizes))
    for stage in stages:
        print(f"{stage:34s}" + "".join(f"{results[size]['us'].get(stage, 0.0):10.2f}"
                                        for size in sizes))
    ours = ("rules (", "detector", "triage", "history + store", "runner glue")
    print(f"{'rules+detectors+triage+store+glue':34s}" + "".join(
        f"{sum(v for s, v in results[size]['us'].items() if s.startswith(ours)):10.2f}"
        for size in sizes))
    print()
    for key in results[sizes[0]]["counts"]:
        print(f"{key:34s}" + "".join(f"{results[size]['counts'][key]:10.3f}"
                                     if isinstance(results[size]['counts'][key], float)
                                     else f"{results[size]['counts'][key]:10d}" for size in sizes))
    same = all(r["versions"] == results[sizes[0]]["versions"] for r in results.values())
    print(f"\nfinding versions identical at every batch size: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
