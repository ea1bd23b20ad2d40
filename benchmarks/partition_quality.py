"""Detection quality when the pipeline's state is split into P partitions by identity, as the
Kafka score stage splits it (``crc32(identity) % kafka.events_partitions``, each partition with
its own baselines, peer groups, lineage and Half-Space Trees), against one partition (a replay).

    python benchmarks/partition_quality.py LOG.log.gz 1 2 4

LOG is a labelled simulated log (``secretscope simulate``, or the cached logs of
``benchmarks/detection_quality.py``); its ``.labels.jsonl`` and ``.windows.jsonl`` sit next to it.
Prints recall, the lowest class recall, precision and false findings per 10k benign calls for
each P. Peer groups and the forest learn from what their partition sees, so more partitions
can mean more false findings: this measures how many.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path


def main() -> int:
    from secretscope.config import load_settings
    from secretscope.models.evaluation import evaluate, load_episodes
    from secretscope.runner import Pipeline
    from secretscope.sources.files import replay

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", type=Path)
    ap.add_argument("partitions", type=int, nargs="+")
    args = ap.parse_args()
    stem = args.log.name.removesuffix(".gz")
    base = load_settings()
    windows = args.log.with_name(stem + ".windows.jsonl")
    if windows.is_file():
        base = base.model_copy(update={"triage": base.triage.model_copy(
            update={"change_window_feed": str(windows.resolve())})})
    episodes = load_episodes(args.log.with_name(stem + ".labels.jsonl"))
    events = list(replay([str(args.log)]))
    size = base.runner.batch_size
    for p in args.partitions:
        found: list = []
        pipelines = [Pipeline(base, on_version=found.append) for _ in range(p)]
        batches: list[list] = [[] for _ in range(p)]
        for event in events:
            k = zlib.crc32(event.identity.encode()) % p
            batches[k].append(event)
            if len(batches[k]) == size:
                pipelines[k].process_batch(batches[k])
                batches[k] = []
        for k in range(p):
            pipelines[k].process_batch(batches[k])
            pipelines[k].finish()
        r = evaluate(found, episodes, len(events))
        print(f"partitions {p}: recall {r.recall:.3f}, lowest class {r.min_class_recall:.3f}, "
              f"precision {r.precision:.3f} ({r.false_findings} false), "
              f"{r.false_per_10k_benign:.2f} false per 10k benign", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
