"""CPU time of ``Pipeline.process_batch`` per call, whole (features, rules, detectors, triage,
glue; no store), on the first N calls of the simulated 200k-call log, at several batch sizes.

    python benchmarks/runner_total.py --calls 100000
    PYTHONPATH=/path/to/other/checkout/shim python benchmarks/runner_total.py --label before

A figure to compare two versions of the code on a shared machine: run the two versions one
after the other, several times in alternation, and compare figures of neighbouring runs. Each
figure is the least CPU time (``time.process_time``) of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    bench_log = Path(tempfile.gettempdir()) / "secretscope-bench" / "bench-200000-3.log"
    ap.add_argument("--log", type=Path, default=bench_log,
                    help="made by benchmarks/replay_throughput.py --calls 200000")
    ap.add_argument("--batch-size", type=int, action="append")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--label", default="this checkout")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from secretscope.config import load_settings
    from secretscope.runner import Pipeline, _fewer_collections
    from secretscope.sources.files import replay

    events = list(itertools.islice(replay([args.log]), args.calls))
    settings = load_settings()
    figures = []
    for size in args.batch_size or [256, 2048]:
        best = float("inf")
        for _ in range(args.repeat):
            pipeline = Pipeline(settings)
            with _fewer_collections():
                t = time.process_time()
                for i in range(0, len(events), size):
                    pipeline.process_batch(events[i:i + size])
                best = min(best, time.process_time() - t)
        figures.append(f"batch {size}: {best / len(events) * 1e6:.2f} us")
    print(f"{args.label}: process_batch CPU per call over {len(events):,} calls, "
          + ", ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
