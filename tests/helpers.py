"""Building events for tests without going through a parser, and waiting on conditions."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from secretscope.events import SUCCESS, AccessEvent

_T = TypeVar("_T")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)  # a Monday, 09:00 UTC
_counter = 0


def make_event(at: datetime | None = None, **fields) -> AccessEvent:
    global _counter
    _counter += 1
    at = at or T0
    path = fields.pop("path", "secret/data/team/app")
    defaults = dict(
        source="vault", event_id=f"ev-{_counter}", ts=at.timestamp(),
        identity="entity:svc-1", display_name="svc-1", policies=("default",), operation="read",
        path=path, secret=path.replace("/data/", "/", 1), namespace="", mount_type="kv",
        remote_address="10.20.1.5", user_agent="vault-agent/1.19.2", outcome=SUCCESS, error="",
        is_login=False, auth_method="kubernetes", token_type="service",
        phases="request+response", origin="test:0",
    )
    defaults.update(fields)
    return AccessEvent(**defaults)


def learn_all(fx, events):
    """Observe each event and fold it into the baseline, as if no detector fired: the
    feature vectors, in order."""
    out = []
    for e in events:
        fv = fx.observe(e)
        fx.learn(fv)
        out.append(fv)
    return out


def every(start: datetime, step: timedelta, n: int):
    return [start + i * step for i in range(n)]


def created(versions):
    """The Create versions among finding versions (what a test of new findings counts)."""
    return [v for v in versions if v.activity_id == 1]


def wait_for(condition: Callable[[], _T], timeout: float, what: str | Callable[[], str],
             interval: float = 0.05) -> _T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` (a callable is called for the message, so it can
    describe the state at the time) when ``timeout`` seconds pass first: a test that waits on
    something that never happens fails instead of carrying on with what it has.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(interval)


def fleet_events(tmp_path_factory, seed: int = 5, label: str = "fleet") -> list[AccessEvent]:
    """The parsed events of a small simulated fleet (4 days, about 15,000 calls)."""
    from secretscope.simulate import SimulationSpec, simulate
    from secretscope.sources.files import replay

    d = tmp_path_factory.mktemp(label)
    log = d / "fleet.log"
    simulate(SimulationSpec(days=4, seed=seed, target_calls=15000), log, d / "labels.jsonl")
    return list(replay([log]))


def replay_into(store, events) -> None:
    """The default pipeline over ``events``, storing into ``store``."""
    from secretscope.config import load_settings
    from secretscope.runner import Pipeline

    Pipeline(load_settings(), store=store).run(iter(events))


def start_socket_service(tmp_path, port: int, store_url: str):
    """``secretscope run`` with Vault's socket source on 127.0.0.1:``port``, the default config
    (rules from this checkout) and ``store_url``; returns (process, its stderr log path)."""
    import subprocess
    import sys

    import yaml

    from conftest import ROOT

    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["store"]["url"] = store_url
    doc["run"] = {"source": "socket"}
    doc["socket"] = {"host": "127.0.0.1", "port": port}
    cfg = tmp_path / "socket.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "secretscope", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    return proc, log


def connect(port: int, proc, log):
    """A connection to the service, or None while it is still starting (fails if it died)."""
    import socket

    assert proc.poll() is None, f"the service exited: {log.read_text()[-2000:]}"
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None
