"""Both cores: the whole ``secretscope replay`` command with ``--workers 2`` against
``--workers 1`` on the same simulated log, in the same run.

    python benchmarks/replay_workers.py --calls 200000

Runs the two alternately (``--repeat`` times each; the medians count), checks the two alerts
files are byte for byte the same, and prints wall seconds, calls/s and CPU seconds of each
and the speed-up. Exits 1 below ``--min-speedup`` (the issue's target, 1.7).
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from replay_throughput import simulated_log  # noqa: E402  (after the path it needs)


def whole_command(log: Path, workers: int, tmp: Path, run: int
                  ) -> tuple[float, float, bytes, int]:
    """(wall seconds, CPU seconds of the command and its children, alerts file, calls)."""
    alerts = tmp / f"alerts-{workers}-{run}.jsonl"
    cmd = [sys.executable, "-m", "secretscope", "replay", str(log), "--workers", str(workers),
           "--store", f"sqlite:///{tmp}/w{workers}-{run}.db", "--alerts-out", str(alerts),
           "--no-table", "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    calls = int(re.search(r"-> ([\d,]+) calls", proc.stderr).group(1).replace(",", ""))
    return wall, cpu, alerts.read_bytes(), calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "secretscope-bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--min-speedup", type=float, default=1.7)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    log = simulated_log(args.calls, args.seed, args.cache)
    walls: dict[int, list[float]] = {1: [], 2: []}
    alerts: dict[int, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            for workers in (1, 2):
                wall, cpu, out, calls = whole_command(log, workers, Path(tmp), run)
                walls[workers].append(wall)
                if alerts.setdefault(workers, out) != out:
                    raise SystemExit(f"--workers {workers}: findings differ between runs")
                print(f"--workers {workers}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
                      f"{calls / wall:,.0f} calls/s (whole command, {calls:,} calls)")
    if alerts[1] != alerts[2]:
        print("FAIL: the alerts of --workers 2 differ from --workers 1", file=sys.stderr)
        return 1
    one, two = (sorted(walls[w])[len(walls[w]) // 2] for w in (1, 2))
    speedup = one / two
    versions = alerts[1].count(b"\n")
    print(f"findings identical ({versions:,} finding versions)")
    print(f"median whole command: --workers 1 {one:.2f} s, --workers 2 {two:.2f} s: "
          f"{speedup:.2f}x")
    if speedup < args.min_speedup:
        print(f"FAIL: {speedup:.2f}x < target {args.min_speedup:.2f}x", file=sys.stderr)
        return 1
    print(f"ok: >= {args.min_speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
