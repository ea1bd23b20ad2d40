"""State kept per tracked identity, and a fleet of a million identities in bounded memory.

    python benchmarks/identity_memory.py                      # bytes per identity
    python benchmarks/identity_memory.py --fleet 1000000      # peak RSS of a 1M-identity replay

The first mode feeds the same number of calls (``--calls``, 200,000) from 200 and from 20,000
identities through the feature extractor (observe, then learn, as the pipeline does for calls
that raise nothing) and prints the traced memory the extractor holds afterwards, per extra
identity: (state with 20,000 - state with 200) / 19,800, the way the issue measured it. Beside
it, in the same run, the baseline: the bytes of one identity's state right after its first call.

The second mode replays a synthetic fleet through the whole pipeline (features, rules, the
default detectors, triage; no store) and prints its peak resident memory; it exits 1 above
``--max-rss-gib`` (4). The stream is generated directly as events, not as audit lines: each
identity makes ``--calls-per-identity`` calls (3) spread over a day of event time, from a
team of 50 that share policies, secrets and a network segment, so parsing is not measured and
the fleet's size is the only thing that grows.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

T0 = 1_772_442_000.0  # 2026-03-02 09:00 UTC, a Monday
TEAM = 50  # identities per team (peer group)
_OPS = ("read",) * 8 + ("list", "update")


def synthetic_events(identities: int, calls: int, seed: int = 1, span: float = 86400.0
                     ) -> Iterator:
    """``calls`` events in event-time order from ``identities`` identities (round robin over a
    shuffled order, so every identity gets calls / identities of them), over ``span`` seconds."""
    from secretscope.events import DENIED, SUCCESS, AccessEvent

    rng = random.Random(seed)
    order = list(range(identities))
    rng.shuffle(order)
    step = span / calls
    for i in range(calls):
        k = order[i % identities]
        team = k // TEAM
        op = _OPS[rng.randrange(len(_OPS))]
        secret = f"kv/team{team}/app{rng.randrange(8)}"
        denied = rng.random() < 0.02
        yield AccessEvent(
            source="vault", event_id=str(uuid.UUID(int=rng.getrandbits(128))), ts=T0 + i * step,
            identity=f"entity:{team:05d}-{k:07d}", display_name=f"svc-{k}",
            policies=("default", f"team{team}"), operation=op, path=secret.replace("/", "/data/", 1),
            secret=secret, namespace="", mount_type="kv",
            remote_address=f"10.{team % 200}.{k % 250}.{k % 7 + 1}",
            user_agent="vault-agent/1.19.2", outcome=DENIED if denied else SUCCESS,
            error="permission denied" if denied else "", is_login=False,
            auth_method="kubernetes", token_type="service", phases="request+response",
            origin=f"synthetic:{i}")


def extractor_bytes(identities: int, calls: int) -> tuple[int, int]:
    """Traced bytes the feature extractor holds after ``calls`` calls from ``identities``
    identities, and how many identities it tracks."""
    from secretscope.config import load_settings
    from secretscope.features import FeatureExtractor
    from secretscope.segments import SegmentTable

    settings = load_settings()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fx = FeatureExtractor(SegmentTable((s.name, s.cidr) for s in settings.segments))
    # the events are made while tracing, as a source makes them: strings the state keeps
    # (an identity's name as its key, addresses, ids) are counted with it
    for e in synthetic_events(identities, calls):
        fx.learn(fx.observe(e))
    del e
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, len(fx.identities)


def first_call_bytes() -> int:
    """Bytes one identity's state grows to with its first call (observed and learned)."""
    few, n_few = extractor_bytes(1, 1)
    more, n_more = extractor_bytes(101, 101)
    return (more - few) // (n_more - n_few)


def per_identity(calls: int) -> int:
    small, n_small = extractor_bytes(200, calls)
    large, n_large = extractor_bytes(20_000, calls)
    per = (large - small) / (n_large - n_small)
    print(f"feature state over {calls:,} calls: {small / 2**20:.1f} MiB for {n_small:,} "
          f"identities, {large / 2**20:.1f} MiB for {n_large:,}")
    print(f"state per tracked identity: {per:,.0f} B "
          f"(baseline, same run: one identity after its first call {first_call_bytes():,} B)")
    return round(per)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def fleet(identities: int, per: int, batch: int, features_only: bool) -> float:
    """Replay a synthetic fleet through the whole pipeline (or only the feature extractor's
    observe and learn); return its peak RSS in GiB."""
    from secretscope.config import load_settings
    from secretscope.runner import Pipeline

    pipeline = Pipeline(load_settings())
    print(f"before the replay: peak RSS {peak_rss_gib():.2f} GiB")
    t = time.perf_counter()
    fx = pipeline.extractor
    if features_only:
        for e in synthetic_events(identities, identities * per):
            fx.learn(fx.observe(e))
    else:
        held = []
        for e in synthetic_events(identities, identities * per):
            held.append(e)
            if len(held) == batch:
                pipeline.process_batch(held)
                held = []
        pipeline.process_batch(held)
        pipeline.finish()
    print(f"fleet: {identities:,} identities, {identities * per:,} calls in "
          f"{time.perf_counter() - t:.0f}s through "
          f"{'the feature extractor' if features_only else 'the pipeline'}; "
          f"{len(fx.identities):,} tracked, {pipeline.stats.findings:,} findings")
    return peak_rss_gib()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--max-bytes", type=int, default=2048, help="per identity; exit 1 above")
    ap.add_argument("--fleet", type=int, default=0, help="identities of a fleet to replay")
    ap.add_argument("--calls-per-identity", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--max-rss-gib", type=float, default=4.0)
    ap.add_argument("--features-only", action="store_true",
                    help="fleet mode: only the feature extractor, not detectors and triage")
    args = ap.parse_args()
    if args.fleet:
        rss = fleet(args.fleet, args.calls_per_identity, args.batch, args.features_only)
        print(f"peak RSS {rss:.2f} GiB (limit {args.max_rss_gib:g} GiB)")
        return 1 if rss > args.max_rss_gib else 0
    per = per_identity(args.calls)
    if per > args.max_bytes:
        print(f"FAIL: {per:,} B per identity > {args.max_bytes:,} B", file=sys.stderr)
        return 1
    print(f"ok: <= {args.max_bytes:,} B per identity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
