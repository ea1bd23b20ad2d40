"""A plain rule-pack script: the yardstick the replay benchmark compares secretscope against.

    python benchmarks/rule_pack_baseline.py AUDIT.log

What a SOC engineer would write in an afternoon: stdlib ``json`` per line, the request and
response halves joined on ``request.id``, and a few windowed rules per identity (root token
use, a burst of denials, a burst of distinct secrets read, a login from a new address). No
models, no store, no explanations. Prints calls/s and the alerts it raised.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict, deque
from datetime import datetime

WINDOW = 300.0  # seconds of event time for the burst rules
DENIED_BURST = 10
DISTINCT_BURST = 20


class RulePack:
    def __init__(self) -> None:
        self.pending: dict[str, dict] = {}
        self.denied: dict[str, deque] = defaultdict(deque)
        self.reads: dict[str, deque] = defaultdict(deque)
        self.addresses: dict[str, set] = defaultdict(set)
        self.alerts: list[tuple[str, str, float]] = []
        self.calls = 0

    def line(self, raw: bytes) -> None:
        start = raw.find(b"{")
        if start < 0:
            return
        try:
            entry = json.loads(raw[start:])
        except ValueError:
            return
        request = entry.get("request") or {}
        rid = request.get("id") or ""
        if entry.get("type") == "request":
            self.pending[rid] = entry
            return
        first = self.pending.pop(rid, None) or entry
        self.call(first, entry)

    def call(self, first: dict, last: dict) -> None:
        self.calls += 1
        auth = first.get("auth") or (last.get("response") or {}).get("auth") or {}
        who = auth.get("entity_id") or auth.get("accessor") or auth.get("display_name") or "?"
        request = first.get("request") or {}
        ts = datetime.fromisoformat(first["time"]).timestamp()
        if "root" in (auth.get("policies") or ()):
            self.alerts.append(("root-token-use", who, ts))
        if "permission denied" in (last.get("error") or ""):
            self._burst(self.denied[who], ts, None, DENIED_BURST, "denied-burst", who)
        if request.get("operation") == "read":
            self._burst(self.reads[who], ts, request.get("path"), DISTINCT_BURST,
                        "distinct-secrets-burst", who)
        address = request.get("remote_address") or ""
        seen = self.addresses[who]
        if seen and address not in seen and request.get("path", "").endswith("/login"):
            self.alerts.append(("login-new-address", who, ts))
        seen.add(address)

    def _burst(self, window: deque, ts: float, item, limit: int, rule: str, who: str) -> None:
        window.append((ts, item))
        while window and window[0][0] < ts - WINDOW:
            window.popleft()
        distinct = len(window) if item is None else len({i for _, i in window})
        if distinct == limit:
            self.alerts.append((rule, who, ts))

    def finish(self) -> None:
        for entry in self.pending.values():
            self.call(entry, entry)
        self.pending.clear()


def run(path: str) -> tuple[int, int, float]:
    """(calls, alerts, seconds) of the rule pack over the file."""
    t = time.perf_counter()
    pack = RulePack()
    with open(path, "rb") as fh:
        for raw in fh:
            pack.line(raw)
    pack.finish()
    return pack.calls, len(pack.alerts), time.perf_counter() - t


if __name__ == "__main__":
    calls, alerts, seconds = run(sys.argv[1])
    print(f"rule pack: {calls:,} calls in {seconds:.2f}s = {calls / seconds:,.0f} calls/s; "
          f"{alerts:,} alerts")
