"""Live latency: ``secretscope run`` with the socket source, fed a simulated log at a set rate.

    python benchmarks/live_latency.py --calls 100000 --rate 5000

Starts ``secretscope run`` (socket source, SQLite store in a temporary directory, the default
config otherwise) as a subprocess, writes a simulated Vault audit log's lines to its socket
paced by the wall clock at ``--rate`` calls/s, as one Vault node's socket audit device would,
waits until the service has scored every call, stops it, and prints the feed rate achieved next
to the target and p50/p99/max of the latency from a call's arrival to its finding stored.

How the latency is measured: the feeder notes the wall-clock time (``time.time``) just before
it writes each call's first audit line (its request entry) to the socket. The service stores
each finding's first version (Create) with ``created_at``, this host's wall clock read in the
transaction that writes it, just before the commit. A finding's latency is that ``created_at``
minus the send time of the call that triggered it; both are this host's clock. The service's
``secretscope_processing_latency_seconds`` histogram is not used: it starts when the joined
event leaves the source, so it leaves out the waits for the response entry and for the batch,
which are what this benchmark is about.

Exits 1 if the p99 is above ``--max-p99`` (1 s), or if no finding was stored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHUNK_SECONDS = 0.002  # the feeder writes what is due every 2 ms: pacing finer than a batch


def simulated_log(calls: int, seed: int, cache: Path) -> Path:
    from secretscope.simulate import SimulationSpec, simulate

    path = cache / f"bench-{calls}-{seed}.log"
    if not path.exists():
        summary = simulate(SimulationSpec(days=7, seed=seed, target_calls=calls), path,
                           cache / f"bench-{calls}-{seed}.labels.jsonl")
        print(f"simulated {summary.calls:,} calls ({summary.lines:,} lines)")
    return path


def read_calls(path: Path, lose_every: int) -> tuple[list[bytes], list[str | None], int]:
    """The log's lines, for each line the request id it opens (None if it is not the first
    line of its call), and how many response entries were left out: those of every
    ``lose_every``-th call (0: none), as if a node had died before logging them."""
    lines: list[bytes] = []
    opens: list[str | None] = []
    seen: dict[str, int] = {}
    lost = 0
    for line in path.read_bytes().splitlines(keepends=True):
        entry = orjson.loads(line)
        rid = entry["request"].get("id") or None
        first = rid is not None and rid not in seen
        if first:
            seen[rid] = len(seen)
        elif (lose_every and rid is not None and entry["type"] == "response"
              and seen[rid] % lose_every == lose_every - 1):
            lost += 1
            continue
        lines.append(line)
        opens.append(rid if first else None)
    return lines, opens, lost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, port: int, metrics_port: int, batch_wait: float | None,
                 join_wait: float | None) -> tuple[Path, Path]:
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    db = tmp / "store.db"
    doc["store"]["url"] = f"sqlite:///{db}"
    doc["run"] = {"source": "socket"}
    doc["socket"] = {"host": "127.0.0.1", "port": port}
    doc["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    if batch_wait is not None:
        doc["runner"]["batch_wait_seconds"] = batch_wait
    if join_wait is not None:
        doc["input"]["join_wait_seconds"] = join_wait
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg, db


def connect(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"the service exited with {proc.returncode} before listening")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"the service did not listen on 127.0.0.1:{port} in {timeout:.0f} s")
            time.sleep(0.05)


def wait_ready(metrics_port: int, proc: subprocess.Popen, log: Path,
               timeout: float = 300.0) -> None:
    """Until /readyz says the pipeline is built: start-up is not what is measured here."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"the service exited with {proc.returncode} before it was ready:\n"
                     f"{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5):
                return
        except OSError:  # not serving yet, or 503 while starting
            if time.monotonic() > deadline:
                sys.exit(f"the service was not ready in {timeout:.0f} s:\n"
                         f"{log.read_text()[-2000:]}")
            time.sleep(0.05)


def feed(sock: socket.socket, lines: list[bytes], opens: list[str | None],
         line_rate: float) -> tuple[dict[str, float], float, float]:
    """Write the lines at ``line_rate`` lines/s; return each call's send time, the seconds
    the feed took and the longest write (the service not reading blocks it)."""
    sent: dict[str, float] = {}
    longest = 0.0
    n = len(lines)
    start = time.perf_counter()
    i = 0
    while i < n:
        due = min(n, int((time.perf_counter() - start) * line_rate) + 1)
        if due <= i:
            time.sleep(min(CHUNK_SECONDS, (i - due + 1) / line_rate))
            continue
        now = time.time()
        for rid in opens[i:due]:
            if rid is not None:
                sent[rid] = now
        sock.sendall(b"".join(lines[i:due]))
        longest = max(longest, time.time() - now)
        i = due
    return sent, time.perf_counter() - start, longest


def scored(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("secretscope_events_scored_total "):
                return int(float(line.split()[1]))
    return 0


def wait_scored(metrics_port: int, calls: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (done := scored(metrics_port)) < calls:
        if time.monotonic() > deadline:
            print(f"warning: {done:,} of {calls:,} calls scored {timeout:.0f} s after the feed "
                  f"ended", file=sys.stderr)
            return done
        time.sleep(0.1)
    return done


def latencies(db: Path, sent: dict[str, float]) -> tuple[list[float], int]:
    """Seconds from each finding's triggering call sent to its Create stored, and how many
    findings had a trigger the feeder did not time."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "select f.trigger_event_id, v.created_at from findings f join finding_versions v "
            "on v.finding_id = f.id where v.activity_id = 1").fetchall()
    out, untimed = [], 0
    for trigger, created in rows:
        at = sent.get(trigger)
        if at is None:
            untimed += 1
            continue
        stored = datetime.fromisoformat(created)
        if stored.tzinfo is None:
            stored = stored.replace(tzinfo=timezone.utc)
        out.append(stored.timestamp() - at)
    return sorted(out), untimed


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100_000, help="size of the simulated log")
    ap.add_argument("--rate", type=float, default=5000.0, help="calls/s to feed")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()),
                    help="where simulated logs are kept between runs")
    ap.add_argument("--batch-wait", type=float, help="runner.batch_wait_seconds (default: "
                    "the config's)")
    ap.add_argument("--join-wait", type=float, help="input.join_wait_seconds (default: the "
                    "config's)")
    ap.add_argument("--lose-responses-every", type=int, default=0, metavar="N",
                    help="leave out the response entry of every N-th call (0: none), so those "
                    "requests wait for the join wait")
    ap.add_argument("--keep", type=Path, help="keep the service's config, log and store here")
    ap.add_argument("--max-p99", type=float, default=1.0, help="seconds; exit 1 above it")
    args = ap.parse_args()

    lines, opens, lost = read_calls(simulated_log(args.calls, args.seed, args.cache),
                                    args.lose_responses_every)
    calls = sum(1 for rid in opens if rid is not None)
    line_rate = args.rate * len(lines) / calls
    with tempfile.TemporaryDirectory(prefix="live-latency-") as tmp:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        port, metrics_port = free_port(), free_port()
        cfg, db = write_config(Path(tmp), port, metrics_port, args.batch_wait, args.join_wait)
        log = Path(tmp) / "run.log"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "secretscope", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
            env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        try:
            wait_ready(metrics_port, proc, log)
            print(f"service ready after {time.perf_counter() - started:.2f} s")
            sock = connect(port, proc)
            sock.settimeout(None)  # a service that falls behind shows in the rate achieved
            sent, seconds, longest = feed(sock, lines, opens, line_rate)
            sock.close()
            done = wait_scored(metrics_port, calls, timeout=120)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
            cpu_after = os.times()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            print(log.read_text()[-3000:], file=sys.stderr)
            return 1
        summary = json.loads([l for l in log.read_text().splitlines() if '"stopped"' in l][-1])
        delays, untimed = latencies(db, sent)
    service_cpu = cpu_after.children_user + cpu_after.children_system
    print(f"fed {calls:,} calls ({len(lines):,} lines, {lost:,} responses left out) in "
          f"{seconds:.2f} s: {calls / seconds:,.0f} calls/s achieved (target "
          f"{args.rate:,.0f} calls/s); longest write {1000 * longest:.0f} ms")
    print(f"service: {done:,} calls scored, {summary['events']:,} events, "
          f"{summary['findings']:,} findings, {summary.get('duplicates', 0):,} duplicates; "
          f"{service_cpu:.1f} s CPU over its whole run, start-up included")
    if not delays:
        print("no timed finding stored")
        return 1
    p50, p99 = percentile(delays, 50), percentile(delays, 99)
    print(f"latency from a call sent to its finding stored, over {len(delays)} findings "
          f"({untimed} untimed): p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms, "
          f"max {1000 * delays[-1]:.0f} ms (bound {1000 * args.max_p99:.0f} ms)")
    return 1 if p99 > args.max_p99 else 0


if __name__ == "__main__":
    sys.exit(main())
