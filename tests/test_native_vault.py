"""The compiled Vault decoder and joiner (``secretscope._native``) against the Python ones they
replaced (``vault_reference``): the same events, dead letters and counters for real logs, a
simulated fleet, generated entries, and lines cut and garbled at random.

The compiled decoder takes a line only where it reads it as the reference does and declines
the rest, which ``parse_entry`` decodes in Python; what matters is that no line comes out
differently, whichever of the two read it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vault_reference as ref
from secretscope._native import decode_vault
from secretscope.errors import ParseError
from secretscope.parsers import vault
from secretscope.parsers.limits import InputLimits
from secretscope.simulate import SimulationSpec, simulate
from secretscope.sources.files import replay

from conftest import ROOT, VAULT_SAMPLES

REAL_LOGS = [ROOT / "tests" / "data" / "openbao_audit.log",
             ROOT / "tests" / "data" / "openbao_login_unknown_user.log"]


def dead(exc: ParseError) -> tuple:
    return ("dead", exc.reason, exc.detail, exc.field, exc.origin)


def run(module, lines: list[bytes], limits: InputLimits = InputLimits(), name: str = "f.log",
        by_line: bool = False, **joiner) -> tuple[list, tuple]:
    """The events, dead letters and counters of ``module``'s parser and joiner (the reference's
    or the package's) over ``lines``, a line at a time. With ``by_line``, as the live sources
    feed the compiled joiner: through ``feed_line``, and through ``parse_entry`` and ``feed``
    where it declines."""
    joiner = module.VaultJoiner(max_field_chars=limits.max_field_chars, **joiner)
    out: list = []
    for n, raw in enumerate(lines, 1):
        if by_line:
            events = joiner.feed_line(raw, name, n, limits.max_record_bytes)
            if events is not None:
                out += events
                continue
        try:
            entry = module.parse_entry(raw, name, limits, n)
        except ParseError as exc:
            out.append(dead(exc))
            continue
        out += joiner.feed(entry)
    out += joiner.flush()
    return out, (joiner.duplicates, joiner.self_tests, joiner.remembered(), joiner.latest_ts)


def reference(lines: list[bytes], limits: InputLimits = InputLimits(), name: str = "f.log",
              **joiner) -> tuple[list, tuple]:
    return run(ref, lines, limits, name, **joiner)


def same(lines: list[bytes], limits: InputLimits = InputLimits(), name: str = "f.log",
         **joiner) -> list:
    expected = reference(lines, limits, name, **joiner)
    for by_line in (True, False):
        got = run(vault, lines, limits, name, by_line=by_line, **joiner)
        assert got[1] == expected[1]
        assert len(got[0]) == len(expected[0])
        for a, b in zip(got[0], expected[0]):
            assert type(a) is type(b)
            if a != b:  # name the fields that differ
                assert [(f, getattr(a, f)) for f in a.__struct_fields__
                        if getattr(a, f) != getattr(b, f)] == [
                    (f, getattr(b, f)) for f in b.__struct_fields__ if getattr(a, f) != getattr(b, f)]
    return expected[0]


def test_real_openbao_logs_and_the_samples_give_the_same_events(samples):
    for path in REAL_LOGS + VAULT_SAMPLES:
        lines = path.read_bytes().splitlines(keepends=True)
        out = same(lines)
        assert out and not [o for o in out if isinstance(o, tuple)], path
    # a file name that was not UTF-8 on disk (a surrogate stands for its byte) names origins
    out = same(lines, name="audit-\udcff.log")
    assert out[0].origin == "audit-\udcff.log:1"


def test_a_simulated_fleet_gives_the_same_events(tmp_path):
    log = tmp_path / "sim.log"
    simulate(SimulationSpec(days=2, seed=11, target_calls=6000), log, tmp_path / "labels.jsonl")
    lines = log.read_bytes().splitlines(keepends=True)
    out = same(lines)
    assert len(out) > 5000
    # copies from a second audit device are dropped alike, and a short join timeout expires
    # requests whose responses come late
    same(lines[:3000] + lines[1000:2000], join_timeout=0.5)
    same(lines[:2000], remember_seconds=5, min_remembered=10)


def test_every_line_of_a_simulated_log_is_taken_by_the_compiled_decoder(tmp_path):
    log = tmp_path / "sim.log"
    simulate(SimulationSpec(days=1, seed=5, target_calls=2000), log)
    lines = log.read_bytes().splitlines()
    assert all(decode_vault(raw, "sim.log", n) is not None for n, raw in enumerate(lines, 1))


# --- generated entries -------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "secret/", "auth/approle/login", "auth/userpass/login/alice",
                     "secret/data/a/b", "sys/audit/test", "token-abc", "approle", "kv", "kv-v2",
                     "permission denied", "1 error occurred:\n\t* permission denied\n\n",
                     "[2001:db8::10]:8200", "10.0.0.1:4242", "é\u2028\x1c", "\x00", "ns1/"]),
)
maybe = st.one_of(st.none(), texts)


def auth_blocks():
    return st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "entity_id": maybe, "accessor": maybe, "display_name": maybe, "token_type": maybe,
        "client_token": texts,
        "policies": st.one_of(st.none(), st.lists(texts, max_size=3),
                              st.lists(st.just("p"), min_size=65, max_size=66)),
        "metadata": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            "role_name": maybe, "service_account_namespace": maybe,
            "service_account_name": maybe, "other": texts})),
    }))


def times():
    moments = st.datetimes(min_value=datetime(1700, 1, 2), max_value=datetime(2200, 1, 1))
    offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timedelta(minutes=m))

    def render(moment: datetime, digits: int, offset: timedelta | None) -> str:
        text = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if digits:
            text += "." + f"{moment.microsecond:06d}{moment.microsecond % 997:03d}"[:digits]
        if offset is None:
            return text + "Z"
        sign = "-" if offset < timedelta(0) else "+"
        minutes = abs(int(offset.total_seconds())) // 60
        return text + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"

    strict = st.builds(render, moments, st.integers(0, 9), st.one_of(st.none(), offsets))
    return st.one_of(strict, strict.map(lambda t: t.replace("T", " ")),
                     st.sampled_from(["2026-03-02T00:00:02", "2026-03-02T00:00:02.Z",
                                      "2026-03-02T24:00:00Z", "2026-02-29T00:00:00Z",
                                      "2024-02-29T00:00:00Z", "0001-01-01T00:00:00+01:00",
                                      "9999-12-31T23:59:59-01:00", "2026-03-02T00:00:02z",
                                      "2026-03-02T00:00:02.1234567890Z", "not a time"]))


@st.composite
def entries(draw):
    line: dict = {"time": draw(times()),
                  "type": draw(st.sampled_from(["request", "response", "request", "other"]))}
    request = draw(st.fixed_dictionaries({}, optional={
        "id": st.one_of(st.none(), st.sampled_from(["", "r1", "r2", "r3", "r4"])),
        "operation": maybe, "path": maybe, "mount_point": maybe, "mount_type": maybe,
        "remote_address": maybe,
        "namespace": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"path": maybe})),
        "headers": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            "user-agent": st.one_of(st.none(), texts, st.lists(texts, max_size=2),
                                    st.text(min_size=250, max_size=300)),
            "x-other": st.lists(texts, max_size=1)})),
        "data": st.dictionaries(texts, texts, max_size=2),
    }))
    line["request"] = request
    if draw(st.booleans()):
        line["auth"] = draw(auth_blocks())
    if draw(st.booleans()):
        line["response"] = draw(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={"auth": auth_blocks(), "data": st.dictionaries(texts, texts, max_size=2)})))
    if draw(st.booleans()):
        line["error"] = draw(maybe)
    raw = json.dumps(line, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    return draw(st.sampled_from([b"", b"prefix ", b"\xef\xbb\xbf"])) + raw + b"\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entries(), min_size=1, max_size=12), st.sampled_from([1024, 6]))
def test_generated_entries_give_the_same_events(lines, max_chars):
    same(lines, InputLimits(max_field_chars=max_chars), join_timeout=5)


# --- lines cut and garbled ----------------------------------------------------------------------

def _base_lines() -> list[bytes]:
    return (ROOT / "tests" / "data" / "openbao_audit.log").read_bytes().splitlines()[:40]


BASE = _base_lines()
GARBAGE = [b"", b"\\", b'"', b"\\u", b"\\ud800", b"\\udc00\\ud800", b"\x00", b"\x1f", b"\t",
           b"\xff", b"\xc3", b"\xe2\x80", b"{", b"}", b"[", b"]", b",", b":", b"01", b"1e999",
           b"-", b"NaN", b"null", b"true", b'"x":1,', b"\\/", b"\\b", b"\xed\xa0\x80"]


@st.composite
def garbled(draw):
    raw = bytearray(draw(st.sampled_from(BASE)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        if how == "insert":
            raw[at:at] = draw(st.sampled_from(GARBAGE))
        elif how == "delete":
            del raw[at:at + draw(st.integers(1, 8))]
        elif how == "replace":
            raw[at:at + 1] = draw(st.sampled_from(GARBAGE))
        else:
            del raw[at:]
    return bytes(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbled(), min_size=1, max_size=4))
def test_cut_and_garbled_lines_give_the_same_events_and_dead_letters(lines):
    same(lines + BASE[:6])


@pytest.mark.parametrize("edit", [
    (b'"path":"', b'"path":"\\ud800'),  # a lone surrogate in a field read
    (b'"client_token":"', b'"client_token":"\\ud800'),  # ... in one skipped
    (b'"client_token":"', b'"client_token":"\x01'),  # a raw control character, skipped
    (b'"path":"', b'"path":"\x01'),
    (b'"request":{', b'"request":{"path":"x",'),  # a field read twice
    (b'"request":{', b'"request":{"remote_port":01,'),  # a leading zero, skipped
    (b'"request":{', b'"request":{"remote_port":1e999,'),  # a number past a double
    (b'"request":{', b'"request":{"remote_port":-,'),
    (b'"request":{', b'"request":{"x":[1,2,],'),  # a trailing comma
    (b'"request":{', b'"request":{"x":NaN,'),
    (b'"request":{', b'"request":{"p\\u0061th":"escaped-name",'),  # an escaped field name
    (b'"path":"', b'"path":"\\u00e9\\n\\t'),  # escapes in a field read
    (b'"type":"request"', b'"type":"re\\u0071uest"'),
    (b'"time":"', b'"time" : "'),
])
def test_edge_cases_of_json_read_as_the_reference_reads_them(edit):
    old, new = edit
    lines = [raw.replace(old, new, 1) for raw in BASE[:6]]
    assert lines != BASE[:6]
    same(lines)


@settings(max_examples=300, deadline=None)
@given(times())
def test_times_are_the_seconds_python_reads(text):
    line = json.dumps({"time": text, "type": "request", "request": {"id": "r"}}).encode()
    try:
        expected = ref.parse_entry(line, "t", InputLimits(), 1).ts
    except ParseError:
        expected = None
    entry = decode_vault(line, "t", 1)
    if entry is not None:  # declined times are read by Python, whatever they are
        assert entry.ts == expected
    try:
        assert vault.parse_entry(line, "t", InputLimits(), 1).ts == expected
    except ParseError:
        assert expected is None


def test_the_strict_form_is_taken_and_other_iso_forms_are_left_to_python():
    def line(t: str) -> bytes:
        return json.dumps({"time": t, "type": "request", "request": {"id": "r"}}).encode()

    for t in ["2026-03-02T00:00:02.847516296Z", "2026-03-02T00:00:02Z",
              "2026-03-02T00:00:02.8+05:30", "1700-01-01T00:00:00-00:00"]:
        assert decode_vault(line(t), "t", 1).ts == datetime.fromisoformat(t).timestamp()
    for t in ["2026-03-02 00:00:02Z", "2026-03-02T00:00:02", "2026-03-02t00:00:02Z",
              "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]:
        assert decode_vault(line(t), "t", 1) is None
        moment = datetime.fromisoformat(t)
        assert vault.parse_entry(line(t), "t").ts == (
            moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def test_a_replay_of_one_file_and_of_two_give_what_the_reference_gives(tmp_path):
    lines = BASE + [b"garbage\n", BASE[0]]
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"\n".join(lines) + b"\n")
    b.write_bytes(b"")
    expected = [o for o in reference(lines, name=str(a))[0] if not isinstance(o, tuple)]
    for paths in ([a], [a, b]):
        items = list(replay(paths))
        events = [i for i in items if i.__class__.__name__ == "AccessEvent"]
        assert events == expected
        assert [d.origin for d in items if d.__class__.__name__ == "DeadLetter"] == [
            f"{a}:{len(BASE) + 1}"]


def test_an_entry_decoded_either_way_reads_the_same():
    for raw in BASE:
        fast = decode_vault(raw, "f.log", 3)
        slow = vault._parse_in_python(raw, "f.log", 3)
        for name in ("kind", "ts", "request_id", "path", "lineno", "origin"):
            assert getattr(fast, name) == getattr(slow, name)


# --- a file read in pieces ----------------------------------------------------------------------

def _items(paths, limits):
    from secretscope.sources.files import ReplayCounters

    counters = ReplayCounters(0)
    items = list(replay(paths, limits, counters=counters))
    return items, (counters.lines, counters.dead_letters, counters.duplicates,
                   counters.incomplete, counters.unrecognised)


LINE_KINDS = st.sampled_from(["record", "record", "record", "blank", "garbage", "declined",
                              "long", "just-under", "at-cap", "just-over", "far-over", "crlf"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE_KINDS, min_size=1, max_size=60), st.booleans(), st.integers(0, 200),
       st.sampled_from([1, 700, 5000, 1 << 16]))
def test_a_file_read_in_pieces_gives_what_the_line_loop_gives(tmp_path_factory, kinds, ended,
                                                              pad, piece):
    """One file is read in pieces (``_Pieces``, 64 KiB, and here smaller ones too); with a
    second, empty file the same lines go through the line loop of a merge. Items, dead letters
    (digests and sizes of oversize lines included) and counters must be the same, for lines at
    and around the size limit, lines across piece boundaries, and a last line without its
    newline."""
    from secretscope.sources import files

    limits = InputLimits(max_record_bytes=4000 + pad)
    cap = limits.max_record_bytes + 1
    lines, n = [], 0
    for kind in kinds:
        raw = BASE[n % len(BASE)].rstrip(b"\n")
        n += 1
        if kind == "blank":
            raw = b"   "
        elif kind == "garbage":
            raw = b"not json " + raw[:30]
        elif kind == "declined":
            raw = raw.replace(b'"path":"', b'"path":"\\u00e9', 1).replace(
                b'"id":"', b'"x":"\\ud83d\\ude00","id":"', 1)
        elif kind in ("long", "just-under", "at-cap", "just-over", "far-over"):
            size = {"long": 40_000, "just-under": cap - 2, "at-cap": cap - 1,
                    "just-over": cap, "far-over": 200_000}[kind]
            raw = raw[:-1] + b',"pad":"' + b"x" * max(0, size - len(raw) - 10) + b'"}'
            raw = raw[:size] if len(raw) > size else raw
        elif kind == "crlf":
            raw += b"\r"
        lines.append(raw)
    root = tmp_path_factory.mktemp("pieces")
    one, empty = root / "a.log", root / "b.log"
    one.write_bytes(b"\n".join(lines) + (b"\n" if ended else b""))
    empty.write_bytes(b"")
    default, files._PIECE = files._PIECE, piece
    try:
        pieces = _items([one], limits)
    finally:
        files._PIECE = default
    by_line = _items([one, empty], limits)
    assert pieces[1] == by_line[1]
    assert pieces[0] == by_line[0]


def test_a_line_longer_than_the_limit_is_never_held_whole_in_pieces(tmp_path):
    """The rest of a line with no newline within ``max_record_bytes`` is skipped in bounded
    reads of 1 MiB: a 20 MB line costs the replay a few MB of memory at its peak, and its
    dead letter counts all of it."""
    import tracemalloc

    limits = InputLimits(max_record_bytes=10_000)
    path = tmp_path / "big.log"
    path.write_bytes(BASE[0] + b"\n" + b'{"x":"' + b"y" * 20_000_000 + b'"}\n' + BASE[1] + b"\n")
    tracemalloc.start()
    try:
        items, counts = _items([path], limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dead = [i for i in items if i.__class__.__name__ == "DeadLetter"]
    assert [(d.reason, d.origin, d.size) for d in dead] == [("oversize", f"{path}:2", 10_000)]
    assert "20000008 bytes" in dead[0].detail and counts[0] == 3
    assert peak < 6_000_000, peak
