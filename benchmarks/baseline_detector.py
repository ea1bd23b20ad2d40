"""Robust baseline detector cost: microseconds per row of ``score_then_learn`` on feature rows.

    python benchmarks/baseline_detector.py [--rows 100000] [--identities 100] [--days 1 14]

Rows for ~100 identities with Poisson request rates, in batches of 256 as the pipeline sends
them. The cost grows with hour closes per row: ~42 rows per identity-hour over 1 day, ~3 over
14 days, so both are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# One BLAS thread: the figure is per core, like the replay benchmark's.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

BATCH = 256
RATES = (("requests_count_1m", 0.1), ("requests_count_1h", 1.0),
         ("secrets_distinct_1h", 0.3), ("denied_count_5m", 0.01))


def event(identity: str, ts: float, n: int):
    from secretscope.events import SUCCESS, AccessEvent

    return AccessEvent(
        source="vault", event_id=f"bench-{n}", ts=ts, identity=identity,
        display_name=identity.removeprefix("entity:"), policies=("default",), operation="read",
        path="secret/data/team/app", secret="secret/team/app", namespace="", mount_type="kv",
        remote_address="10.20.1.5", user_agent="vault-agent/1.19.2", outcome=SUCCESS, error="",
        is_login=False, auth_method="kubernetes", token_type="service",
        phases="request+response", origin=f"bench:{n}")


def feature_rows(rows: int, identities: int, days: int, seed: int = 0):
    import numpy as np

    from secretscope.features import FEATURE_NAMES, INDEX, FeatureVector

    rng = np.random.default_rng(seed)
    ids = [f"entity:svc-{k}" for k in range(identities)]
    ts = np.sort(rng.uniform(0, days * 86400.0, size=rows)) + 1_770_000_000.0
    who = rng.integers(0, identities, size=rows)
    level = rng.uniform(1, 50, size=identities)
    values = np.zeros((rows, len(FEATURE_NAMES)))
    for name, scale in RATES:
        values[:, INDEX[name]] = rng.poisson(level[who] * scale)
    vectors = [FeatureVector(event(ids[w], float(t), n), "k8s-prod", tuple(v))
               for n, (w, t, v) in enumerate(zip(who, ts, values.tolist()))]
    return vectors, values


def measure(rows: int, identities: int, days: int) -> tuple[float, int]:
    """(seconds, firings) of score-then-learn over the rows, in pipeline-sized batches."""
    import numpy as np

    from secretscope.models.baseline import RobustBaselineDetector

    vectors, values = feature_rows(rows, identities, days)
    detector = RobustBaselineDetector()
    exclude = np.zeros(BATCH, bool)
    fired = 0
    start = time.perf_counter()
    for pos in range(0, rows, BATCH):
        part = vectors[pos:pos + BATCH]
        scored = detector.score_then_learn(part, exclude[:len(part)], values[pos:pos + BATCH])
        fired += int(scored.fired.sum())
    return time.perf_counter() - start, fired


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--days", type=int, nargs="+", default=[1, 14])
    args = ap.parse_args()
    for days in args.days:
        elapsed, fired = measure(args.rows, args.identities, days)
        print(f"RobustBaselineDetector: {1e6 * elapsed / args.rows:.2f} us/row over "
              f"{args.rows:,} rows, {args.identities} identities over {days} day(s), "
              f"batches of {BATCH}, {fired} fired")
    return 0


if __name__ == "__main__":
    sys.exit(main())
