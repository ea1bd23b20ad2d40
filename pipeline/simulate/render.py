"""Rendering calls as Vault audit lines (request and response entries), labels and change windows."""

from __future__ import annotations

import gzip
import heapq
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import numpy as np
import orjson

from secretscope.simulate.benign import _Bulk, _rotation_run
from secretscope.simulate.world import (Actor, Call, DENIED, Episode, MINUTE, Mount, NS, OK, ROOT_NS,
                                     ROTATOR_POLICY, Secret, Service, TOKEN, World, _ANON_AUTH,
                                     _EPOCH, _ERR_DENIED, _ERR_DENIED_REQUEST, _ERR_INVALID,
                                     _VARIANT, _iso_seconds)


def _render(w: World, calls: list[Call], owner: list[int], streams: list[tuple[Service, Secret]],
            bulk: _Bulk, episode_ids: list[list[str]],
            write: Callable[[list[bytes]], None]) -> tuple[int | None, int | None]:
    """Merge bulk reads and calls by time and write request/response lines in time order.

    Responses follow their request by 1-50 ms, so they wait in a small heap and are written
    once no earlier request remains."""
    nb = len(bulk.t)
    all_t = np.concatenate([bulk.t, np.fromiter((c.t for c in calls), np.int64, len(calls))])
    order = np.argsort(all_t, kind="stable").tolist()
    n = len(order)
    rng = np.random.default_rng([w.seed, 202])
    delays = np.minimum(1_000_000 + rng.exponential(4e6, n), 50e6).astype(np.int64).tolist()
    ids = rng.bytes(16 * n).hex()
    stream, epoch, pod, port = (a.tolist() for a in bulk[1:])
    all_t = all_t.tolist()
    kv = w.kv
    pending: list[tuple[int, int, bytes]] = []
    out: list[bytes] = []
    first = all_t[order[0]] if n else None
    last = None
    for k, idx in enumerate(order):
        t = all_t[idx]
        while pending and pending[0][0] <= t:
            out.append(heapq.heappop(pending)[2])
        h = ids[32 * k:32 * k + 32]
        rid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
        if idx < nb:
            svc, secret = streams[stream[idx]]
            issued, ips = svc.epochs[epoch[idx]]
            req, resp = _lines(w, t, t + delays[k], rid, TOKEN, svc.actor, issued, "read",
                               secret.path, kv, ips[pod[idx]], port[idx], svc.ua, OK, None,
                               secret.response)
        else:
            c = calls[idx - nb]
            req, resp = _lines(w, t, t + delays[k], rid, c.kind, c.actor, c.issued, c.op, c.path,
                               c.mount, c.addr, c.port, c.ua, c.outcome, c.data, c.response)
            if owner[idx - nb] >= 0:
                episode_ids[owner[idx - nb]].append(rid)
        out.append(req)
        heapq.heappush(pending, (t + delays[k], k, resp))
        if len(out) >= 16384:
            write(out)
            out = []
    while pending:
        last, _, line = heapq.heappop(pending)
        out.append(line)
    write(out)
    return first, last


def _lines(w: World, t: int, t_resp: int, rid: str, kind: str, actor: Actor, issued: int,
           op: str, path: str, mount: Mount, addr: str, port: int, ua: str | None,
           outcome: str, data: dict | None, response: bytes | None) -> tuple[bytes, bytes]:
    """The request and response lines of one call. The request object is serialized once and
    shared by both lines, as Vault repeats it verbatim."""
    if kind == TOKEN:
        req = {"id": rid, "client_id": actor.client_id, "operation": op, **mount.request_fields,
               "client_token": actor.request_token, "client_token_accessor": actor.accessor,
               "namespace": ROOT_NS, "path": path}
        auth = w.auth_block(actor, issued, outcome != DENIED)
    else:
        req = {"id": rid, "operation": op, **mount.request_fields, "namespace": ROOT_NS,
               "path": path}
        auth = _ANON_AUTH
    if data is not None:
        req["data"] = data
    req["remote_address"] = addr
    req["remote_port"] = port
    if ua:
        req["headers"] = {"user-agent": [ua]}
    body = orjson.dumps(req)
    if outcome == OK:
        resp, err_req, err = response or mount.ok, b"", b""
    elif outcome == DENIED:
        resp, err_req, err = mount.denied, _ERR_DENIED_REQUEST, _ERR_DENIED
    else:
        resp, err_req, err = mount.invalid, b"", _ERR_INVALID
    return (b'{"time":"%s","type":"request","auth":%s,"request":%s%s}'
            % (_vault_time(t), auth, body, err_req),
            b'{"time":"%s","type":"response","auth":%s,"request":%s,"response":%s%s}'
            % (_vault_time(t_resp), auth, body, resp, err))


_DATE_PREFIX: dict[int, bytes] = {}


def _vault_time(t: int) -> bytes:
    """RFC 3339 with up to nine fractional digits, trailing zeros trimmed, as Go prints it."""
    sec, frac = divmod(t, NS)
    day, sod = divmod(sec, 86400)
    prefix = _DATE_PREFIX.get(day)
    if prefix is None:
        prefix = _DATE_PREFIX[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT").encode()
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    if frac:
        return b"%s%02d:%02d:%02d.%sZ" % (prefix, hh, mm, ss, (b"%09d" % frac).rstrip(b"0"))
    return b"%s%02d:%02d:%02dZ" % (prefix, hh, mm, ss)


def _write_labels(episodes: list[Episode], ids: list[list[str]], out: Path | TextIO) -> None:
    lines = [orjson.dumps({"episode": f"ep-{k + 1:04d}", "class": ep.cls,
                           "identity_hint": ep.hint,
                           "start": _vault_time(ep.calls[0].t).decode(),
                           "end": _vault_time(max(c.t for c in ep.calls)).decode(),
                           "request_ids": ids[k]})
             for k, ep in enumerate(episodes)]
    with _sink(out) as write:
        write(lines)


def _change_windows(w: World) -> list[dict]:
    """Expected bursts a change-management feed would announce, with a little slack: every
    weekly rotation run (by the rotator's policy) and every planned deploy (by the service's
    display name; unplanned reschedules are not announced)."""
    windows = []
    for day in range(w.days):
        if w.weekday(day) == w.rotator.weekday:
            calls = _rotation_run(w, day)
            windows.append((calls[0].t - 5 * MINUTE, calls[-1].t + 5 * MINUTE, "rotation",
                            [ROTATOR_POLICY], [],
                            f"weekly secret rotation ({len(calls) - 1} secrets)"))
    for svc in w.all_services:
        pods = {t: len(ips) for t, ips in svc.epochs}
        name = svc.actor.metadata["role"] if svc.actor.metadata else svc.actor.key
        for t in sorted(svc.deploys):
            note = f"deploy of {name} ({pods[t]} pod{'s' if pods[t] > 1 else ''})"
            # Pods log in within 30 s of the deploy and render their secrets right after.
            windows.append((t - MINUTE, t + 5 * MINUTE, "deploy", [], [svc.actor.display_name],
                            note))
    return [{"start": _iso_seconds(lo), "end": _iso_seconds(hi + NS - 1), "kind": kind,
             "policies": policies, "display_names": names, "note": note}
            for lo, hi, kind, policies, names, note in sorted(windows)
            if hi > w.start_ns and lo < w.end_ns]


def _write_windows(windows: list[dict], out: Path | TextIO) -> None:
    with _sink(out) as write:
        write([orjson.dumps(x) for x in windows])


@contextmanager
def _sink(out: Path | TextIO) -> Iterator[Callable[[list[bytes]], None]]:
    """A writer of line batches. Gzip output has a zero mtime and no file name in its header so
    that the compressed bytes are reproducible too; level 3 compresses about as well as the
    default 6 on these repetitive lines at twice the speed."""
    if isinstance(out, (str, Path)):
        path = Path(out)
        with open(path, "wb") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                   compresslevel=3) as gz:
                    yield lambda lines: lines and gz.write(b"\n".join(lines) + b"\n")
            else:
                yield lambda lines: lines and raw.write(b"\n".join(lines) + b"\n")
    else:
        yield lambda lines: lines and out.write((b"\n".join(lines) + b"\n").decode())
