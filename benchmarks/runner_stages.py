"""Where the runner's time goes per call: features, rules, each detector, triage, store and glue.

    python benchmarks/runner_stages.py --calls 200000 --batch-size 256 --batch-size 2048

The simulated log is parsed once into memory; then, for each batch size, a fresh pipeline
(default config, SQLite store with sampled feature history) processes it in batches while every
stage is timed with ``time.perf_counter`` on one pinned core (a CPU-time clock costs four times
as much per reading, too much for per-row wrappers); the whole ``process_batch`` CPU time is
printed beside its wall time, so a run disturbed by other processes shows.
"runner glue" is what ``process_batch`` spends outside the timed stages, less the timing
wrappers' own cost (measured on a no-op in the same run). The counters show how much work the
redo after a flagged row costs: extractor learns and unlearns, and rows the detectors scored,
per event. Figures of different batch sizes come from the same run, so their ratio holds even
when the machine is busy.
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

_clock = time.perf_counter


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


def wrapper_cost(n: int = 200_000) -> float:
    """CPU seconds one timing wrapper adds around a call, beyond the call itself."""
    stages = Stages()

    class Noop:
        def f(self, x):
            return x

    plain, wrapped = Noop(), Noop()
    stages.wrap(wrapped, "f", "noop")
    best = float("inf")
    for _ in range(3):
        t = _clock()
        for i in range(n):
            plain.f(i)
        t_plain = _clock() - t
        t = _clock()
        for i in range(n):
            wrapped.f(i)
        best = min(best, (_clock() - t - t_plain) / n)
    return max(0.0, best)


def instrument(pipeline, stages: Stages) -> None:
    fx = pipeline.extractor
    for method in ("observe_windows", "derive", "learn", "unlearn"):
        stages.wrap(fx, method, f"features.{method}")
    for method in ("evaluate_one", "evaluate"):
        stages.wrap(pipeline.rules, method, "rules")
    for d in pipeline.detectors:
        stages.wrap(d, "score_then_learn", f"detector {d.name}", rows_arg=0)
        stages.wrap(d, "checkpoint", f"detector {d.name}")
        stages.wrap(d, "restore", f"detector {d.name}")
    stages.wrap(pipeline.triage, "decide", "triage")
    stages.wrap(pipeline.history, "record", "history + store")
    if pipeline.store is not None:
        for method in ("add_versions", "add_feature_history", "flush"):
            stages.wrap(pipeline.store, method, "history + store")


def run(events: list, settings, batch_size: int, overhead: float) -> dict:
    from secretscope.runner import Pipeline
    from secretscope.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        pipeline = Pipeline(settings, store=store)
        stages = Stages()
        instrument(pipeline, stages)
        total = 0.0
        findings = 0
        cpu = time.process_time()
        for i in range(0, len(events), batch_size):
            t = _clock()
            findings += len(pipeline.process_batch(events[i:i + batch_size]))
            total += _clock() - t
        t = _clock()
        findings += len(pipeline.finish())
        store.flush()
        total += _clock() - t
        cpu = time.process_time() - cpu
        store.close()
    n = len(events)
    wrapped_calls = sum(stages.calls.values())
    per = 1e6 / n
    out = {stage: s * per for stage, s in sorted(stages.seconds.items())}
    out["runner glue"] = (total - sum(stages.seconds.values()) - wrapped_calls * overhead) * per
    out["total process_batch"] = total * per
    out["total process_batch, CPU time"] = cpu * per
    counts = {
        "learns per event": stages.calls["features.learn"] / n,
        "unlearns per event": stages.calls["features.unlearn"] / n,
        "derives per event": stages.calls["features.derive"] / n,
        "detector rows scored per event": (
            sum(r for s, r in stages.rows.items() if s.startswith("detector"))
            / max(1, len(pipeline.detectors)) / n),
        "finding versions": findings,
    }
    return {"us": out, "counts": counts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch-size", type=int, action="append",
                    help="batch sizes to compare (default 256 and 2048)")
    ap.add_argument("--cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "secretscope-bench")
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
    overhead = wrapper_cost()
    print(f"timing wrapper: {overhead * 1e6:.3f} us per wrapped call (subtracted from glue)")
    results = {size: run(events, settings, size, overhead) for size in sizes}
    stages = list(dict.fromkeys(s for r in results.values() for s in r["us"]))
    print(f"\nCPU microseconds per call, by batch size")
    print(f"{'stage':34s}" + "".join(f"{size:>10d}" for size in sizes))
    for stage in stages:
        print(f"{stage:34s}" + "".join(f"{results[size]['us'].get(stage, 0.0):10.2f}"
                                        for size in sizes))
    ours = ("rules", "detector", "triage", "history + store", "runner glue")
    print(f"{'rules+detectors+triage+store+glue':34s}" + "".join(
        f"{sum(v for s, v in results[size]['us'].items() if s.startswith(ours)):10.2f}"
        for size in sizes))
    print()
    for key in results[sizes[0]]["counts"]:
        print(f"{key:34s}" + "".join(f"{results[size]['counts'][key]:10.3f}"
                                     if isinstance(results[size]['counts'][key], float)
                                     else f"{results[size]['counts'][key]:10d}" for size in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
