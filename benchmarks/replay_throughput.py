"""Replay throughput: a simulated Vault audit log of N calls through the whole pipeline, on one core.

    python benchmarks/replay_throughput.py --calls 200000

Prints calls/s end to end (read, parse, join, features, rules, Half-Space Trees, triage, SQLite
store) and per stage, and the peak resident memory. Exits 1 if calls/s is below
``--min-calls-per-second`` (the target of the current stage of the project).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# One core, one BLAS thread: the figure must hold on a single core of the target machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def simulated_log(calls: int, seed: int, cache: Path) -> Path:
    from pipeline.simulate import SimulationSpec, simulate

    path = cache / f"bench-{calls}-{seed}.log"
    if not path.exists():
        t = time.perf_counter()
        summary = simulate(SimulationSpec(days=7, seed=seed, target_calls=calls), path,
                           cache / f"bench-{calls}-{seed}.labels.jsonl")
        print(f"simulated {summary.calls:,} calls ({summary.lines:,} lines, "
              f"{path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s")
    return path


def stage_costs(path: Path, settings, n: int = 50_000) -> dict[str, float]:
    """Microseconds per item of each stage, measured separately on the first ``n`` lines."""
    import numpy as np

    from models.streaming import HalfSpaceTreesDetector
    from pipeline.features import FeatureExtractor
    from pipeline.parsers.vault import VaultJoiner, parse_entry
    from pipeline.segments import SegmentTable

    with open(path, "rb") as fh:
        lines = [next(fh) for _ in range(n)]
    t = time.perf_counter()
    entries = [parse_entry(raw, "bench") for raw in lines]
    parse_us = (time.perf_counter() - t) / len(lines) * 1e6
    joiner = VaultJoiner()
    t = time.perf_counter()
    events = [e for entry in entries for e in joiner.feed(entry)] + joiner.flush()
    join_us = (time.perf_counter() - t) / len(events) * 1e6
    fx = FeatureExtractor(SegmentTable((s.name, s.cidr) for s in settings.segments))
    t = time.perf_counter()
    vectors = []
    for e in events:
        fv = fx.observe(e)
        fx.learn(fv)
        vectors.append(fv)
    feature_us = (time.perf_counter() - t) / len(events) * 1e6
    det = HalfSpaceTreesDetector()
    t = time.perf_counter()
    for i in range(0, len(vectors), 256):
        chunk = vectors[i:i + 256]
        det.score_then_learn(chunk, np.zeros(len(chunk), dtype=bool))
    hst_us = (time.perf_counter() - t) / len(vectors) * 1e6
    return {"parse per line": parse_us, "join per call": join_us,
            "features per call": feature_us, "hst (incl. scaling) per call": hst_us}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "secretscope-bench")
    ap.add_argument("--min-calls-per-second", type=float, default=20_000)
    ap.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    args = ap.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    args.cache.mkdir(parents=True, exist_ok=True)

    from pipeline.config import load_settings
    from pipeline.runner import Pipeline
    from pipeline.sources.files import ReplayCounters, replay
    from pipeline.store import Store

    path = simulated_log(args.calls, args.seed, args.cache)
    settings = load_settings()
    rss_before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.db")
        pipeline = Pipeline(settings, store=store)
        counters = ReplayCounters(path.stat().st_size)
        t = time.perf_counter()
        stats = pipeline.run(replay([path], counters=counters))
        elapsed = time.perf_counter() - t
        store.close()
    rate = stats.events / elapsed
    print(f"replay: {stats.events:,} calls ({counters.lines:,} lines) in {elapsed:.2f}s "
          f"= {rate:,.0f} calls/s on one core; {stats.findings} findings; "
          f"{len(pipeline.extractor.identities):,} identities")
    print(f"peak RSS {peak_rss_mib():.0f} MiB (before replay {rss_before:.0f} MiB)")
    for stage, us in stage_costs(path, settings).items():
        print(f"  {stage:30s} {us:6.2f} us")
    if rate < args.min_calls_per_second:
        print(f"FAIL: {rate:,.0f} calls/s < target {args.min_calls_per_second:,.0f}", file=sys.stderr)
        return 1
    print(f"ok: >= {args.min_calls_per_second:,.0f} calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
