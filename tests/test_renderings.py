"""Renderings of stored findings: OCSF against the pinned schema, ECS, Splunk HEC, CEF, LEEF.

Real findings come from replaying the reference Vault samples and a small simulated fleet log.
CEF and LEEF are read back with the small parsers below, written from the specs (not from the
renderer), and property-based tests put arbitrary text in every field.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from datetime import datetime

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretscope.config import load_settings
from secretscope.delivery.renderings import (
    ALWAYS_KEPT, OCSF_VERSION, OcsfValidationError, cef_extension, cef_header, leef_attributes,
    leef_header, select_fields, to_cef, to_ecs, to_hec, to_leef, validate_ocsf)
from secretscope.errors import SecretscopeError
from secretscope.events import AccessEvent
from secretscope.findings import to_ocsf
from secretscope.runner import Pipeline

from conftest import VAULT_SAMPLES


def _findings(events) -> list[dict]:
    p = Pipeline(load_settings())
    out = []
    for i in range(0, len(events), 512):
        out += p.process_batch(events[i:i + 512])
    # the outbox stores JSON: read it back the way the delivery worker will
    return [orjson.loads(orjson.dumps(to_ocsf(f))) for f in out]


@pytest.fixture(scope="module")
def docs(tmp_path_factory, samples) -> list[dict]:
    from secretscope.simulate import SimulationSpec, simulate
    from secretscope.sources.files import replay

    vault = [e for e in replay(VAULT_SAMPLES) if isinstance(e, AccessEvent)]
    vault.sort(key=lambda e: e.time)
    log = tmp_path_factory.mktemp("fleet") / "fleet.log"
    simulate(SimulationSpec(days=4, seed=5, target_calls=15000), log)
    fleet = [e for e in replay([log]) if isinstance(e, AccessEvent)]
    found = _findings(vault) + _findings(fleet)
    assert len(found) >= 20
    return found


# --------------------------------------------------------------------------- OCSF

def test_every_real_finding_is_valid_ocsf(docs):
    for doc in docs:
        assert doc["metadata"]["version"] == OCSF_VERSION
        validate_ocsf(doc)


def _broken(doc, change):
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


BREAKS = [
    ("finding_info.attacks[0].technique.uid",
     lambda d: d["finding_info"]["attacks"][0]["technique"].update(uid=1098)),
    ("finding_info.uid", lambda d: d["finding_info"].pop("uid")),
    ("severity_id", lambda d: d.update(severity_id=7)),
    ("src_endpoint", lambda d: d.update(src_endpoint={"ip": "127.0.0.1"})),
    ("evidences[0].src_endpoint.ip",
     lambda d: d["evidences"][0].update(src_endpoint={"ip": "not an address"})),
    ("actor", lambda d: d["metadata"].pop("profiles")),  # actor needs the host profile in 1.3
    ("metadata.version", lambda d: d["metadata"].update(version="1.1.0")),
    ("finding_info.related_events[0].uid",
     lambda d: d["finding_info"]["related_events"][0].update(uid=None)),
]


@pytest.mark.parametrize("path,change", BREAKS, ids=[b[0] for b in BREAKS])
def test_a_broken_document_fails_naming_the_path(docs, path, change):
    doc = next(d for d in docs if d["finding_info"]["attacks"] and d["evidences"])
    with pytest.raises(OcsfValidationError) as info:
        validate_ocsf(_broken(doc, change))
    assert info.value.path == path
    assert path in str(info.value)
    assert isinstance(info.value, SecretscopeError) and isinstance(info.value, ValueError)


def test_not_a_document():
    with pytest.raises(OcsfValidationError):
        validate_ocsf([])


# --------------------------------------------------------------------------- ECS

# ECS 8.x reference: allowed categorization values, and what "api" expects as event.type
ECS_CATEGORIES = {"api", "authentication", "configuration", "database", "driver", "email", "file",
                  "host", "iam", "intrusion_detection", "library", "malware", "network",
                  "package", "process", "registry", "session", "threat", "vulnerability", "web"}
ECS_API_TYPES = {"access", "admin", "allowed", "change", "creation", "deletion", "denied", "end",
                 "info", "start", "user"}
ECS_ARRAYS = ["event.category", "event.type", "threat.technique.id", "threat.technique.name",
              "threat.tactic.id", "threat.tactic.name", "related.user", "related.ip"]
ECS_KEYWORDS = ["event.kind", "event.id", "event.code", "event.action", "event.outcome",
                "event.module", "event.dataset", "event.provider", "rule.id", "rule.name",
                "rule.description", "rule.ruleset", "rule.category", "threat.framework",
                "user.id", "user.name", "message", "ecs.version"]


def _get(doc, dotted):
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _iso_utc(value):
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_ecs_alert_has_the_required_fields_and_types(docs):
    for doc in docs:
        ecs = to_ecs(doc)
        json.dumps(ecs)
        assert ecs["event"]["kind"] == "alert"
        assert ecs["event"]["id"] == doc["finding_info"]["uid"]
        assert _iso_utc(ecs["@timestamp"]).timestamp() * 1000 == pytest.approx(doc["time"])
        _iso_utc(ecs["event"]["start"]), _iso_utc(ecs["event"]["end"])
        assert set(ecs["event"]["category"]) <= ECS_CATEGORIES
        assert set(ecs["event"]["type"]) <= ECS_API_TYPES
        assert ecs["event"]["outcome"] in {"success", "failure", "unknown"}
        assert isinstance(ecs["event"]["severity"], int)
        risk = ecs["event"]["risk_score"]
        assert isinstance(risk, float) and 0 <= risk <= 100
        for path in ECS_ARRAYS:
            value = _get(ecs, path)
            assert value is None or (isinstance(value, list) and
                                     all(isinstance(v, str) for v in value)), path
        for path in ECS_KEYWORDS:
            value = _get(ecs, path)
            assert value is None or isinstance(value, str), path
        assert ecs["threat"]["framework"] == "MITRE ATT&CK"
        attacks = doc["finding_info"]["attacks"]
        assert ecs["threat"]["technique"]["id"] == list(dict.fromkeys(
            a["technique"]["uid"] for a in attacks))
        assert all(re.fullmatch(r"T\d{4}(\.\d{3})?", t) for t in ecs["threat"]["technique"]["id"])
        assert all(re.fullmatch(r"TA\d{4}", t) for t in ecs["threat"]["tactic"]["id"])
        for key in ("id", "name", "description", "ruleset"):
            assert ecs["rule"][key], key
        assert ecs["user"]["id"] == doc["actor"]["user"]["uid"]
        assert ecs["user"]["id"] in ecs["related"]["user"]
        if "source" in ecs:
            ipaddress.ip_address(ecs["source"]["ip"])
            assert ecs["related"]["ip"] == [ecs["source"]["ip"]]
        assert all(isinstance(v, str) for v in ecs["labels"].values())  # ECS labels are keywords
        ss = doc["unmapped"]["secretscope"]
        assert ecs["secretscope"]["reasons"] == ss["reasons"]
        assert ecs["secretscope"]["factors"] == ss["factors"]
    assert any("source" in to_ecs(d) for d in docs)


# --------------------------------------------------------------------------- Splunk HEC

def test_hec_envelope(docs):
    doc = docs[0]
    hec = to_hec(doc, source="secretscope", sourcetype="secretscope:finding")
    # no host or index given: left out, so HEC applies the token's defaults
    assert set(hec) == {"time", "source", "sourcetype", "event", "fields"}
    assert hec["event"] is doc
    assert hec["time"] == pytest.approx(doc["time"] / 1000, abs=1e-6)
    assert round(hec["time"], 3) == hec["time"]
    assert orjson.loads(orjson.dumps(hec))["time"] == hec["time"]  # milliseconds survive JSON
    fields = hec["fields"]
    assert fields["finding_id"] == doc["finding_info"]["uid"]
    assert fields["severity_id"] == str(doc["severity_id"])
    assert fields["severity"] == doc["severity"]
    for value in fields.values():  # HEC indexed fields: flat, strings or lists of strings
        assert isinstance(value, str) or (isinstance(value, list) and
                                          all(isinstance(v, str) for v in value))
    full = to_hec(doc, source="s", sourcetype="st", index="security", host="vault-1")
    assert (full["index"], full["host"], full["source"], full["sourcetype"]) == \
        ("security", "vault-1", "s", "st")


# --------------------------------------------------------------------------- CEF parser

def _split_unescaped(text: str, sep: str, limit: int) -> list[str]:
    """Split on ``sep`` not preceded by an escaping backslash, at most ``limit`` times."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep and len(parts) < limit:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str, table: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


CEF_HEADER_ESC = {"\\": "\\", "|": "|", "n": "\n", "r": "\r"}
CEF_EXT_ESC = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """CEF:0 per "Implementing ArcSight CEF": 7 pipe-separated header fields (``\\|``, ``\\\\``),
    then space-separated ``key=value`` pairs, a key being the word before an unescaped ``=``."""
    assert line.startswith("CEF:0|")
    fields = _split_unescaped(line, "|", 7)
    assert len(fields) == 8
    header = [_unescape(f, CEF_HEADER_ESC) for f in fields[1:7]]
    ext, text = {}, fields[7]
    # positions of unescaped '='
    eqs, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "=":
            eqs.append(i)
        i += 1
    starts = []
    for eq in eqs:
        start = text.rfind(" ", 0, eq) + 1
        starts.append((start, eq))
    for n, (start, eq) in enumerate(starts):
        end = starts[n + 1][0] - 1 if n + 1 < len(starts) else len(text)
        key = text[start:eq]
        assert re.fullmatch(r"[A-Za-z0-9]+", key), key
        assert key not in ext, key
        ext[key] = _unescape(text[eq + 1:end], CEF_EXT_ESC)
    return header, ext


def test_cef_of_real_findings(docs):
    for doc in docs:
        line = to_cef(doc)
        assert "\n" not in line and "\r" not in line
        header, ext = parse_cef(line)
        assert header == list(cef_header(doc)) and ext == cef_extension(doc)
        assert header[:2] == ["secretscope", "secretscope"]
        assert 0 <= int(header[5]) <= 10
        assert ext["externalId"] == doc["finding_info"]["uid"]
        assert int(ext["rt"]) == doc["time"]
        assert ext["suid"] == doc["actor"]["user"]["uid"]
        for n in range(1, 7):
            if f"cs{n}" in ext:
                assert ext[f"cs{n}Label"]
    assert max(int(parse_cef(to_cef(d))[0][5]) for d in docs) >= 8


# --------------------------------------------------------------------------- LEEF parser

def parse_leef(line: str) -> tuple[list[str], str, dict[str, str]]:
    """LEEF:2.0|vendor|product|version|event id|delimiter|attributes; the delimiter is one
    character or its hex code (``x09``/``0x09``). Escapes as documented in the renderer."""
    assert line.startswith("LEEF:2.0|")
    fields = _split_unescaped(line, "|", 6)
    assert len(fields) == 7
    header = [_unescape(f, CEF_HEADER_ESC) for f in fields[1:5]]
    declared = fields[5]
    delim = chr(int(declared.lower().removeprefix("0").removeprefix("x"), 16)) \
        if re.fullmatch(r"(0?[xX])[0-9A-Fa-f]{2,4}", declared) else declared
    assert len(delim) == 1
    table = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", "|": "|", delim: delim}
    attrs = {}
    for pair in _split_unescaped(fields[6], delim, len(fields[6])):
        key, sep, value = pair.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z0-9]+", key), pair
        assert key not in attrs
        attrs[key] = _unescape(value, table)
    return header, delim, attrs


@pytest.mark.parametrize("delimiter", ["\t", "^"])
def test_leef_of_real_findings(docs, delimiter):
    for doc in docs:
        line = to_leef(doc, delimiter=delimiter)
        assert "\n" not in line and "\r" not in line
        header, delim, attrs = parse_leef(line)
        assert delim == delimiter
        assert header == list(leef_header(doc)) and attrs == leef_attributes(doc)
        assert attrs["findingId"] == doc["finding_info"]["uid"]
        assert attrs["devTimeFormat"] == "yyyy-MM-dd'T'HH:mm:ss.SSSZ"
        devtime = datetime.strptime(attrs["devTime"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert devtime.timestamp() * 1000 == pytest.approx(doc["time"])
        assert 1 <= int(attrs["sev"]) <= 10
    if delimiter == "\t":
        assert "|x09|" in to_leef(docs[0])


# --------------------------------------------------------------------------- properties

NASTY = st.sampled_from(list("|\\=\n\r\t^ ") + ["\\n", "\\=", "\\|", " x=", "=\\", "é", "漢",
                                                "\U0001F600", "\u2028", "\x00"])
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=6)), max_size=8).map("".join)


@st.composite
def fuzzed(draw, base):
    """A real finding with arbitrary text in every field the renderings read."""
    doc = copy.deepcopy(base)
    t = lambda: draw(TEXT)  # noqa: E731
    doc["message"] = t()
    product = doc["metadata"]["product"]
    product.update(vendor_name=t(), name=t(), version=t())
    fi = doc["finding_info"]
    fi.update(uid=t(), title=t(), desc=t(), types=[t(), t()])
    fi["analytic"]["name"] = t()
    fi["related_events"] = [{"uid": t()} for _ in range(draw(st.integers(1, 3)))]
    fi["attacks"] = [{"technique": {"uid": t(), "name": t()}, "tactic": {"uid": t(), "name": t()}}]
    doc["actor"]["user"].update(uid=t(), name=t())
    doc["evidences"] = [{"actor": {"user": {"uid": t()}}, "src_endpoint": {"ip": t()}}]
    doc["resources"] = [{"name": t(), "type": "secret", "namespace": t()}]
    ss = doc["unmapped"]["secretscope"]
    ss.update(detectors=[t(), t()], operation=t(), outcome=t(), user_agent=t(), segment=t())
    return doc


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base(docs):
    return next(d for d in docs if d["evidences"][0].get("src_endpoint"))


@PROPS
@given(data=st.data())
def test_cef_round_trips_any_text(base, data):
    doc = data.draw(fuzzed(base))
    line = to_cef(doc)
    assert "\n" not in line and "\r" not in line
    header, ext = parse_cef(line)
    assert header == list(cef_header(doc))
    assert ext == cef_extension(doc)
    # and these are the document's own texts, exactly
    user = doc["actor"]["user"]
    assert header[4] == doc["finding_info"]["title"]
    assert header[:3] == [doc["metadata"]["product"][k] for k in ("vendor_name", "name", "version")]
    expected = {"externalId": doc["finding_info"]["uid"], "msg": doc["message"],
                "suser": user["name"], "suid": user["uid"],
                "src": doc["evidences"][0]["src_endpoint"]["ip"],
                "act": doc["unmapped"]["secretscope"]["operation"],
                "requestClientApplication": doc["unmapped"]["secretscope"]["user_agent"],
                "fname": doc["resources"][0]["name"], "cs4": doc["finding_info"]["desc"]}
    assert {k: ext.get(k, "") for k in expected} == expected


@PROPS
@given(data=st.data(), delimiter=st.sampled_from(["\t", "^", "~", "\x01"]))
def test_leef_round_trips_any_text(base, data, delimiter):
    doc = data.draw(fuzzed(base))
    line = to_leef(doc, delimiter=delimiter)
    assert "\n" not in line and "\r" not in line
    header, delim, attrs = parse_leef(line)
    assert delim == delimiter
    assert header == list(leef_header(doc))
    assert attrs == leef_attributes(doc)
    user = doc["actor"]["user"]
    expected = {"findingId": doc["finding_info"]["uid"], "title": doc["finding_info"]["title"],
                "msg": doc["message"], "userId": user["uid"],
                "src": doc["evidences"][0]["src_endpoint"]["ip"],
                "resource": doc["resources"][0]["name"],
                "realm": doc["resources"][0]["namespace"],
                "userAgent": doc["unmapped"]["secretscope"]["user_agent"],
                "reasons": doc["finding_info"]["desc"]}
    assert {k: attrs.get(k, "") for k in expected} == expected
    assert header[3] == ",".join(doc["unmapped"]["secretscope"]["detectors"])


@given(value=TEXT)
@settings(max_examples=200, deadline=None)
def test_cef_header_field_with_only_separators_round_trips(base, value):
    doc = copy.deepcopy(base)
    doc["finding_info"]["title"] = value
    doc["metadata"]["product"]["version"] = value
    header, _ = parse_cef(to_cef(doc))
    assert header[2] == header[4] == value


def test_leef_rejects_an_unusable_delimiter(docs):
    for bad in ("|", "=", "\\", "\n", "a", "ab"):
        with pytest.raises(ValueError):
            to_leef(docs[0], delimiter=bad)


# --------------------------------------------------------------------------- field selection

def test_select_fields(docs):
    doc = next(d for d in docs if len(d["finding_info"]["attacks"]) > 1)
    assert select_fields(doc, ()) is doc
    kept = select_fields(doc, ["finding_info.attacks.technique.uid", "actor.user.name",
                               "resources", "no.such.path", "message.below_a_string"])
    assert kept == {
        "class_uid": 2004, "severity_id": doc["severity_id"], "time": doc["time"],
        "metadata": {"uid": doc["metadata"]["uid"]},
        "finding_info": {"uid": doc["finding_info"]["uid"],
                         "attacks": [{"technique": {"uid": a["technique"]["uid"]}}
                                     for a in doc["finding_info"]["attacks"]]},
        "actor": {"user": {"name": doc["actor"]["user"]["name"]}},
        "resources": doc["resources"],
    }
    assert list(kept) == [k for k in doc if k in kept]  # the document's order
    # a shorter path wins over a longer one, whichever comes first
    assert select_fields(doc, ["finding_info.title", "finding_info"])["finding_info"] == \
        doc["finding_info"]
    assert select_fields(doc, ["finding_info", "finding_info.title"])["finding_info"] == \
        doc["finding_info"]
    minimal = select_fields(doc, ["nothing"])
    for path in ALWAYS_KEPT:
        assert _get(minimal, path) == _get(doc, path)
    assert copy.deepcopy(doc) == doc  # not modified


def test_renderings_accept_a_field_selected_document(docs):
    """Sinks render what select_fields kept, so the always-kept fields must be enough."""
    for fields in (["nothing"], ["finding_info.attacks.technique.uid", "actor.user"]):
        doc = select_fields(docs[0], fields)
        ecs = to_ecs(doc)
        assert ecs["event"]["id"] == doc["finding_info"]["uid"] and ecs["event"]["kind"] == "alert"
        assert to_hec(doc, source="s", sourcetype="t")["fields"]["finding_id"] == \
            doc["finding_info"]["uid"]
        assert parse_cef(to_cef(doc))[1]["externalId"] == doc["finding_info"]["uid"]
        assert parse_leef(to_leef(doc))[2]["findingId"] == doc["finding_info"]["uid"]
