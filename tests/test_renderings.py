"""Renderings of stored findings: OCSF against the pinned schema, ECS, Splunk HEC, CEF, LEEF.

Real findings come from replaying the reference Vault samples and a small simulated fleet log.
Each format is checked against its spec: ECS against ``ecs_flat.yml`` of ECS 8.11.0 and OCSF
against the OCSF 1.3.0 schema (both under or named by ``tests/data/specs``); CEF and LEEF are read
back with the small parsers below, written from the specs (not from the renderer), and
property-based tests put arbitrary text in every field.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from datetime import datetime
from fnmatch import fnmatch

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretscope.config import load_settings
from secretscope.delivery.renderings import (
    ALWAYS_KEPT, ELASTIC_INDEX, OCSF_VERSION, OcsfValidationError, cef_extension, cef_header,
    leef_attributes, leef_header, select_fields, to_cef, to_ecs, to_hec, to_leef, validate_ocsf)
from secretscope.errors import SecretscopeError
from secretscope.events import AccessEvent
from secretscope.findings import to_ocsf
from secretscope.runner import Pipeline

from conftest import ROOT, VAULT_SAMPLES

SPECS = ROOT / "tests" / "data" / "specs"


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
    # names that do not match their ids, which JSON Schema alone lets through
    ("severity", lambda d: d.update(severity="Severe")),
    ("activity_name", lambda d: d.update(activity_name="Created")),
    ("status", lambda d: d.update(status="Open")),
    ("confidence", lambda d: d.update(confidence="Certain")),
    ("class_name", lambda d: d.update(class_name="Security Finding")),
    ("type_name", lambda d: d.update(type_name="Detection Finding: Update")),
    ("finding_info.analytic.type", lambda d: d["finding_info"]["analytic"].update(
        type_id=4, type="Learning")),  # the caption is "Learning (ML/DL)"
    ("type_uid", lambda d: d.update(activity_id=2, activity_name="Update")),  # still 200401
]


@pytest.mark.parametrize("path,change", BREAKS, ids=[b[0] for b in BREAKS])
def test_a_broken_document_fails_naming_the_path(docs, path, change):
    doc = next(d for d in docs if d["finding_info"]["attacks"] and d["evidences"]
               and d["activity_id"] == 1)
    with pytest.raises(OcsfValidationError) as info:
        validate_ocsf(_broken(doc, change))
    assert info.value.path == path
    assert path in str(info.value)
    assert isinstance(info.value, SecretscopeError) and isinstance(info.value, ValueError)


def test_not_a_document():
    with pytest.raises(OcsfValidationError):
        validate_ocsf([])


def test_an_other_enum_value_takes_any_name(docs):
    """OCSF's 99 "Other" means the source's own term is in the name."""
    validate_ocsf(_broken(docs[0], lambda d: d["finding_info"]["analytic"].update(
        type_id=99, type="Peer comparison")))


def _ocsf_enum(attribute: str, obj: str | None = None) -> dict[int, str]:
    from ocsf_json_schema import get_ocsf_schema

    schema = get_ocsf_schema(OCSF_VERSION)
    attrs = (schema["objects"][obj] if obj else schema["classes"]["detection_finding"])[
        "attributes"]
    return {int(k): v["caption"] for k, v in attrs[attribute]["enum"].items()}


def test_ocsf_ids_and_names_follow_the_schema(docs):
    severities, confidences = _ocsf_enum("severity_id"), _ocsf_enum("confidence_id")
    analytic_types = _ocsf_enum("type_id", "analytic")
    assert analytic_types[4] == "Learning (ML/DL)"
    seen_types = set()
    for doc in docs:
        assert doc["type_uid"] == doc["class_uid"] * 100 + doc["activity_id"]
        assert doc["severity"] == severities[doc["severity_id"]]
        assert doc["confidence"] == confidences[doc["confidence_id"]]
        assert doc["confidence_id"] == (3 if doc["confidence_score"] >= 80 else
                                        2 if doc["confidence_score"] >= 50 else 1)
        fi = doc["finding_info"]
        for analytic in [fi["analytic"], *fi.get("related_analytics", ())]:
            assert analytic["type"] == analytic_types[analytic["type_id"]]
            seen_types.add(analytic["type"])
    assert seen_types == {"Rule", "Learning (ML/DL)"}, "both kinds of detector are exercised"


def test_one_detector_id_per_finding(docs):
    """analytic.uid is the leading detector alone; the others are related analytics."""
    several = 0
    for doc in docs:
        fi, detectors = doc["finding_info"], doc["unmapped"]["secretscope"]["detectors"]
        assert fi["analytic"]["uid"] == detectors[0] and "," not in fi["analytic"]["uid"]
        assert [a["uid"] for a in fi.get("related_analytics", ())] == detectors[1:]
        several += len(detectors) > 1
        ecs, hec = to_ecs(doc), to_hec(doc, source="s", sourcetype="t")
        assert ecs["rule"]["id"] == detectors[0] and ecs["rule"]["name"] == detectors
        assert hec["fields"]["signature_id"] == detectors[0]
        assert hec["fields"]["detectors"] == detectors
        cef_h, cef_x = parse_cef(to_cef(doc))
        assert cef_h[3] == detectors[0] and cef_x["cs1"] == ",".join(detectors)
        leef_h, _, leef_a = parse_leef(to_leef(doc))
        assert leef_h[3] == detectors[0] and leef_a["detectors"] == ",".join(detectors)
    assert several, "no finding with more than one detector: a weak test"


def test_a_finding_stored_before_the_split_renders_the_same(docs):
    """Documents in an outbox from an older version: comma-joined analytic name, sub-technique
    as technique. Renderings still give one detector id and the split."""
    doc = next(d for d in docs if len(d["unmapped"]["secretscope"]["detectors"]) > 1)
    old = copy.deepcopy(doc)
    names = old["unmapped"]["secretscope"].pop("detectors")
    old["finding_info"].pop("related_analytics")
    old["finding_info"]["analytic"] = {"name": ", ".join(names), "type_id": 1, "type": "Rule"}
    old["finding_info"]["attacks"] = [{"technique": {"uid": "T1562.008", "name": "x"}}]
    assert to_ecs(old)["rule"]["id"] == names[0]
    assert parse_cef(to_cef(old))[0][3] == names[0]
    threat = to_ecs(old)["threat"]["technique"]
    assert (threat["id"], threat["subtechnique"]["id"]) == (["T1562"], ["T1562.008"])


# --------------------------------------------------------------------------- ATT&CK

def test_sub_techniques_are_sub_techniques_in_every_format(docs):
    doc = next(d for d in docs if any(a.get("sub_technique") for a in d["finding_info"]["attacks"]))
    attack = next(a for a in doc["finding_info"]["attacks"] if a.get("sub_technique"))
    assert attack["technique"] == {"uid": "T1562", "name": "Impair Defenses",
                                   "src_url": "https://attack.mitre.org/techniques/T1562/"}
    assert attack["sub_technique"] == {
        "uid": "T1562.008", "name": "Disable or Modify Cloud Logs",
        "src_url": "https://attack.mitre.org/techniques/T1562/008/"}
    assert attack["tactic"]["uid"] == "TA0005"
    threat = to_ecs(doc)["threat"]
    assert "T1562" in threat["technique"]["id"]
    assert all("." not in t for t in threat["technique"]["id"])
    sub = threat["technique"]["subtechnique"]
    assert sub == {"id": ["T1562.008"], "name": ["Disable or Modify Cloud Logs"],
                   "reference": ["https://attack.mitre.org/techniques/T1562/008/"]}
    ext = parse_cef(to_cef(doc))[1]
    assert "T1562" in ext["cs2"].split(",") and "T1562.008" not in ext["cs2"]
    assert (ext["flexString1Label"], ext["flexString1"]) == ("attackSubTechniques", "T1562.008")
    attrs = parse_leef(to_leef(doc))[2]
    assert "T1562" in attrs["attackTechniques"].split(",")
    assert attrs["attackSubTechniques"] == "T1562.008"
    fields = to_hec(doc, source="s", sourcetype="t")["fields"]
    assert "T1562.008" in fields["mitre_technique_id"] and "T1562" not in fields[
        "mitre_technique_id"]
    for d in docs:  # nowhere else is a sub-technique sent as a technique
        assert all("." not in a["technique"]["uid"] for a in d["finding_info"]["attacks"])


# --------------------------------------------------------------------------- ECS

@pytest.fixture(scope="module")
def ecs_spec() -> dict:
    """ECS 8.11.0 ``generated/ecs/ecs_flat.yml`` (see tests/data/specs/README.md)."""
    return yaml.safe_load((SPECS / "ecs_flat-8.11.0.yml").read_text())


def _flat(obj, prefix=""):
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat(value, path + ".")
        else:
            yield path, value


def _fits(ecs_type: str, value) -> bool:
    if ecs_type in ("keyword", "constant_keyword", "wildcard", "match_only_text", "text"):
        return isinstance(value, str)
    if ecs_type in ("long", "integer", "short", "byte"):
        return isinstance(value, int) and not isinstance(value, bool)
    if ecs_type in ("float", "scaled_float", "double", "half_float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ecs_type == "date":
        return bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value))
    if ecs_type == "ip":
        try:
            return bool(ipaddress.ip_address(value))
        except ValueError:
            return False
    raise AssertionError(f"a type this test does not know: {ecs_type}")


def _allowed(spec: dict) -> dict[str, dict]:
    return {v["name"]: v for v in spec.get("allowed_values") or ()}


def check_ecs(ecs: dict, spec: dict) -> None:
    """Every field is an ECS 8.11 field of its declared type, arrays where ECS normalizes to
    arrays, and categorization values among the allowed ones (event.type among the ones its
    event.category expects); our own fields only under ``secretscope.*`` and ``labels.*``."""
    for path, value in _flat(ecs):
        if path.startswith("secretscope."):
            continue
        if path.startswith("labels."):  # ECS labels: an object of keywords
            assert spec["labels"]["type"] == "object" and isinstance(value, str), path
            continue
        assert path in spec, f"{path} is not an ECS 8.11 field"
        field = spec[path]
        if "array" in field["normalize"]:
            assert isinstance(value, list), f"{path}: ECS wants an array"
        for v in value if isinstance(value, list) else [value]:
            assert _fits(field["type"], v), f"{path}: {v!r} is not a {field['type']}"
            if _allowed(field):
                assert v in _allowed(field), f"{path}: {v!r} is not an allowed value"
    expected = set()
    for category in ecs["event"]["category"]:
        expected |= set(_allowed(spec["event.category"])[category]["expected_event_types"])
    assert set(ecs["event"]["type"]) <= expected


def _get(doc, dotted):
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _iso_utc(value):
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_ecs_alert_matches_ecs_8_11(docs, ecs_spec):
    for doc in docs:
        ecs = to_ecs(doc)
        json.dumps(ecs)
        check_ecs(ecs, ecs_spec)
        assert ecs["ecs"]["version"] == "8.11.0"
        assert ecs["event"]["kind"] == "alert"
        assert ecs["event"]["id"] == doc["finding_info"]["uid"]
        assert _iso_utc(ecs["@timestamp"]).timestamp() * 1000 == pytest.approx(doc["time"])
        assert 0 <= ecs["event"]["risk_score"] <= 100
        attacks = doc["finding_info"]["attacks"]
        assert ecs["threat"]["technique"]["id"] == list(dict.fromkeys(
            a["technique"]["uid"] for a in attacks))
        assert all(re.fullmatch(r"T\d{4}", t) for t in ecs["threat"]["technique"]["id"])
        assert all(re.fullmatch(r"TA\d{4}", t) for t in ecs["threat"]["tactic"]["id"])
        for key in ("id", "name", "description", "ruleset"):
            assert ecs["rule"][key], key
        assert ecs["user"]["id"] == doc["actor"]["user"]["uid"]
        assert ecs["user"]["id"] in ecs["related"]["user"]
        if "source" in ecs:
            assert ecs["related"]["ip"] == [ecs["source"]["ip"]]
        ss = doc["unmapped"]["secretscope"]
        assert ecs["secretscope"]["reasons"] == ss["reasons"]
        assert ecs["secretscope"]["factors"] == ss["factors"]
    assert any("source" in to_ecs(d) for d in docs)


def test_the_ecs_check_fails_on_what_ecs_does_not_allow(docs, ecs_spec):
    ecs = to_ecs(docs[0])
    for path, bad in [("event.kind", "finding"), ("event.severity", "high"),
                      ("threat.technique.subtechnique.id", "T1562.008"),
                      ("event.outcome", "denied"), ("rule.uuid_of_ours", "x"),
                      ("event.type", ["creation", "connection"])]:
        broken = copy.deepcopy(ecs)
        *parents, leaf = path.split(".")
        node = broken
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = bad
        with pytest.raises(AssertionError):
            check_ecs(broken, ecs_spec)


# Elastic Security's prebuilt "External Alerts" rule, rule_id eb079c62-4481-4d6e-9643-3ca499df7aaa
# (elastic/detection-rules rules/promotions/external_alerts.toml): the indices it reads, its
# query's exclusions, and its severity_mapping on event.severity.
EXTERNAL_ALERTS_INDICES = ["apm-*-transaction*", "traces-apm*", "auditbeat-*", "filebeat-*",
                           "logs-*", "packetbeat-*", "winlogbeat-*"]
EXTERNAL_ALERTS_EXCLUDED_MODULES = {"endgame", "endpoint", "cloud_defend"}
EXTERNAL_ALERTS_SEVERITY = {21: "low", 47: "medium", 73: "high", 99: "critical"}
# OCSF severity -> the Elastic Security severity a SOC expects for it
EXPECTED_ELASTIC = {"Informational": "low", "Low": "low", "Medium": "medium", "High": "high",
                    "Critical": "critical"}


def test_elastic_security_external_alerts_rule_picks_the_findings_up(docs):
    from secretscope.delivery.config import ElasticSink

    assert ElasticSink.model_fields["index"].default == ELASTIC_INDEX
    assert any(fnmatch(ELASTIC_INDEX, pattern) for pattern in EXTERNAL_ALERTS_INDICES)
    # Elasticsearch's built-in logs-*-* template makes data streams, which refuse the _bulk
    # "index" action with an _id and an external version that the Elastic sink sends
    assert not fnmatch(ELASTIC_INDEX, "logs-*-*")
    seen = set()
    for doc in docs:
        event = to_ecs(doc)["event"]
        assert event["kind"] == "alert" and event["module"] not in EXTERNAL_ALERTS_EXCLUDED_MODULES
        assert EXTERNAL_ALERTS_SEVERITY[event["severity"]] == EXPECTED_ELASTIC[doc["severity"]]
        seen.add(event["severity"])
    assert len(seen) >= 3, seen


DEFAULTS = ROOT / "config"


def _mapped(properties: dict, prefix=""):
    for key, value in properties.items():
        if "properties" in value and "type" not in value:
            yield from _mapped(value["properties"], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_shipped_index_template_maps_every_field_as_ecs_does(docs, ecs_spec):
    template = json.loads((DEFAULTS / "elastic" / "index-template.json").read_text())
    assert any(fnmatch(ELASTIC_INDEX, p) for p in template["index_patterns"])
    assert "data_stream" not in template  # see the test above
    mappings = template["template"]["mappings"]
    mapped = dict(_mapped(mappings["properties"]))
    for path, mapping in mapped.items():
        if path.split(".")[0] in ("secretscope", "labels"):
            continue
        assert mapping["type"] == ecs_spec[path]["type"], path
        for name, sub in mapping.get("fields", {}).items():
            assert {"name": name, "type": sub["type"]} in [
                {"name": m["name"], "type": m["type"]} for m in ecs_spec[path]["multi_fields"]]
    emitted = {p for d in docs for p, _ in _flat(to_ecs(d))
               if p.split(".")[0] not in ("secretscope", "labels")}
    assert emitted <= set(mapped), emitted - set(mapped)
    # the External Alerts rule reads event.ingested (timestamp_override): the pipeline sets it
    assert "event.ingested" in mapped
    pipeline = json.loads((DEFAULTS / "elastic" / "ingest-pipeline.json").read_text())
    assert template["template"]["settings"]["index"]["default_pipeline"] == "secretscope-findings"
    assert {"set": {"field": "event.ingested", "value": "{{{_ingest.timestamp}}}",
                    "override": True}} in pipeline["processors"]


# --------------------------------------------------------------------------- Splunk HEC

# The CIM Alerts data model (Splunk Common Information Model 5.x/6.x reference, "Alerts"): its
# fields, the prescribed values of severity and type, and its constraint tag=alert.
CIM_ALERTS_FIELDS = {"app", "body", "description", "dest", "dest_bunit", "dest_category",
                     "dest_priority", "dest_type", "id", "mitre_technique_id", "severity",
                     "severity_id", "signature", "signature_id", "src", "src_bunit",
                     "src_category", "src_priority", "src_type", "subject", "tag", "type",
                     "user", "user_bunit", "user_category", "user_name", "user_priority",
                     "vendor_account", "vendor_region"}
CIM_SEVERITIES = {"critical", "high", "medium", "low", "informational", "unknown"}
CIM_TYPES = {"alarm", "alert", "event", "task", "warning"}
CIM_EXPECTED = {"app", "dest", "signature", "signature_id", "type", "severity", "user",
                "description", "id"}
# ours, beside the CIM fields: the finding keys and the ATT&CK split
HEC_OWN_FIELDS = {"finding_id", "finding_version", "activity", "detectors", "user_id",
                  "attack_technique", "attack_sub_technique", "attack_tactic"}


def test_hec_envelope(docs):
    doc = docs[0]
    hec = to_hec(doc, source="secretscope", sourcetype="secretscope:finding")
    # no host or index given: left out, so HEC applies the token's defaults
    assert set(hec) == {"time", "source", "sourcetype", "event", "fields"}
    assert hec["event"] is doc
    assert hec["time"] == pytest.approx(doc["time"] / 1000, abs=1e-6)
    assert round(hec["time"], 3) == hec["time"]
    assert orjson.loads(orjson.dumps(hec))["time"] == hec["time"]  # milliseconds survive JSON
    full = to_hec(doc, source="s", sourcetype="st", index="security", host="vault-1")
    assert (full["index"], full["host"], full["source"], full["sourcetype"]) == \
        ("security", "vault-1", "s", "st")


def test_hec_fields_are_ready_for_the_cim_alerts_data_model(docs):
    for doc in docs:
        fields = to_hec(doc, source="s", sourcetype="t")["fields"]
        for value in fields.values():  # HEC indexed fields: flat, strings or lists of strings
            assert isinstance(value, str) or (isinstance(value, list) and
                                              all(isinstance(v, str) for v in value))
        assert CIM_EXPECTED <= set(fields), CIM_EXPECTED - set(fields)
        assert set(fields) <= CIM_ALERTS_FIELDS | HEC_OWN_FIELDS
        assert fields["severity"] in CIM_SEVERITIES
        assert fields["severity"] == doc["severity"].lower()
        assert "severity_id" not in fields  # the event's own severity_id, extracted from JSON
        assert fields["type"] in CIM_TYPES
        assert fields["user"] == doc["actor"]["user"]["name"]  # the name; the id is user_id
        assert fields["user_id"] == doc["actor"]["user"]["uid"]
        assert fields["id"] == fields["finding_id"] == doc["finding_info"]["uid"]
        assert fields["signature"] == doc["finding_info"]["title"]
        assert all(re.fullmatch(r"T\d{4}(\.\d{3})?", t) for t in fields["mitre_technique_id"])
    # the field names CIM and the OCSF event share are only the one props.conf folds
    shared = {k for d in docs for k in to_hec(d, source="s", sourcetype="t")["fields"]} & \
        {k for d in docs for k in d}
    assert shared == {"severity"}


def _conf(name: str):
    import configparser

    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # Splunk keys are case-sensitive
    parser.read_string((DEFAULTS / "splunk" / name).read_text())
    return parser


def test_the_shipped_splunk_files_put_findings_in_the_alerts_data_model():
    from secretscope.delivery.config import SplunkHecSink

    sourcetype = SplunkHecSink.model_fields["sourcetype"].default
    props = _conf("props.conf")[sourcetype]
    assert props["KV_MODE"] == "json"
    assert props["EVAL-severity"] == "lower(mvindex(severity, 0))"
    eventtypes = _conf("eventtypes.conf")
    (name,) = eventtypes.sections()
    assert eventtypes[name]["search"] == f'sourcetype="{sourcetype}"'
    assert _conf("tags.conf")[f"eventtype={name}"]["alert"] == "enabled"


def test_the_shipped_siem_files_are_package_data():
    """config/ is the package secretscope.defaults: each shipped folder is a package of
    pyproject.toml whose package-data globs match every file in it, so the wheel carries it."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = sorted((DEFAULTS / "elastic").iterdir()) + sorted((DEFAULTS / "splunk").iterdir())
    assert len(shipped) == 5
    for path in shipped:
        package = f"secretscope.defaults.{path.parent.name}"
        assert package in data["packages"], package
        assert any(fnmatch(path.name, g) for g in data["package-data"][package]), path


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


# "Implementing ArcSight CEF" rev 25: header field lengths (Device Vendor 63, Device Product 63,
# Device Version 31, Device Event Class ID 1023, Name 512) and the extension dictionary's
# lengths of the keys we send; src is an IPv4 address, c6a2 the source IPv6 address.
CEF_HEADER_MAX = [63, 63, 31, 1023, 512]
CEF_MAX = {"act": 63, "cat": 1023, "externalId": 40, "fname": 1023, "msg": 1023, "name": 512,
           "outcome": 63, "reason": 1023, "requestClientApplication": 1023, "suid": 1023,
           "suser": 1023, "flexString1": 1023, "flexString1Label": 128, "c6a2Label": 1023,
           **{f"cs{n}": 4000 for n in range(1, 7)}, **{f"cs{n}Label": 1023 for n in range(1, 7)},
           **{f"cn{n}Label": 1023 for n in range(1, 4)}}
CEF_TIMES = {"rt", "start", "end"}  # milliseconds since the epoch
CEF_NUMBERS = {"cnt", "cn1", "cn2", "cn3"}


def check_cef_dictionary(header: list[str], ext: dict[str, str]) -> None:
    for value, limit in zip(header, CEF_HEADER_MAX):
        assert len(value) <= limit, (value[:40], limit)
    for key, value in ext.items():
        if key in CEF_TIMES or key in CEF_NUMBERS:
            assert re.fullmatch(r"-?\d+", value), (key, value)
        elif key == "src":
            assert ipaddress.ip_address(value).version == 4, value
        elif key == "c6a2":
            assert ipaddress.ip_address(value).version == 6, value
        else:
            assert key in CEF_MAX, f"{key}: not a dictionary key this test knows"
            assert len(value) <= CEF_MAX[key], (key, len(value))


def test_cef_of_real_findings(docs):
    for doc in docs:
        line = to_cef(doc)
        assert "\n" not in line and "\r" not in line
        header, ext = parse_cef(line)
        assert header == list(cef_header(doc)) and ext == cef_extension(doc)
        check_cef_dictionary(header, ext)
        assert header[:2] == ["secretscope", "secretscope"]
        assert 0 <= int(header[5]) <= 10
        assert ext["externalId"] == doc["finding_info"]["uid"]
        assert int(ext["rt"]) == doc["time"]
        assert ext["suid"] == doc["actor"]["user"]["uid"]
        for n in range(1, 7):
            if f"cs{n}" in ext:
                assert ext[f"cs{n}Label"]
    assert max(int(parse_cef(to_cef(d))[0][5]) for d in docs) >= 8


def _with_source(doc: dict, ip: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["evidences"][0]["src_endpoint"] = {"ip": ip}
    validate_ocsf(doc)
    return doc


@pytest.mark.parametrize("ip,key,sent", [
    ("2001:db8::10", "c6a2", "2001:db8::10"),
    ("2001:0db8:0000:0000:0000:0000:0000:0010", "c6a2", "2001:db8::10"),
    ("::ffff:192.0.2.7", "src", "192.0.2.7"),  # an IPv4 client seen over IPv6
    ("192.0.2.7", "src", "192.0.2.7"),
])
def test_cef_sends_ipv6_sources_in_c6a2(base, ip, key, sent):
    header, ext = parse_cef(to_cef(_with_source(base, ip)))
    check_cef_dictionary(header, ext)
    assert ext[key] == sent
    other = {"src", "c6a2"} - {key}
    assert not other & set(ext)
    assert ("c6a2Label" in ext) == (key == "c6a2")
    if key == "c6a2":
        assert ext["c6a2Label"] == "Source IPv6 Address"


def test_cef_cuts_values_to_the_dictionary_lengths_with_escapes_intact(base):
    doc = copy.deepcopy(base)
    long = "a=b\\c|" * 2000  # every character one the extension or header escapes
    doc["message"] = doc["finding_info"]["title"] = doc["finding_info"]["desc"] = long
    doc["unmapped"]["secretscope"]["operation"] = long
    doc["resources"][0]["name"] = long
    header, ext = parse_cef(to_cef(doc))
    check_cef_dictionary(header, ext)
    assert header[4] == long[:512]
    assert (ext["msg"], ext["act"], ext["cs4"], ext["fname"]) == (
        long[:1023], long[:63], long[:4000], long[:1023])


# --------------------------------------------------------------------------- LEEF parser

def parse_leef(line: str) -> tuple[list[str], str, dict[str, str]]:
    """LEEF:2.0|vendor|product|version|event id|delimiter|attributes, per IBM's "Log Event
    Extended Format (LEEF)" guide, version 2.0: the delimiter is one character or its hex code
    (``x09``/``0x09``); a pair is split at its first ``=``. LEEF has no escapes: nothing is
    unescaped, a backslash is a backslash."""
    assert line.startswith("LEEF:2.0|")
    fields = line.split("|", 6)
    assert len(fields) == 7
    header = fields[1:5]
    declared, body = fields[5], fields[6]
    delim = chr(int(declared.lower().removeprefix("0").removeprefix("x"), 16)) \
        if re.fullmatch(r"(0?[xX])[0-9A-Fa-f]{2,4}", declared) else declared
    assert len(delim) == 1
    attrs = {}
    for pair in body.split(delim):
        key, sep, value = pair.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z0-9]+", key), pair
        assert key not in attrs
        attrs[key] = value
    return header, delim, attrs


def leef_clean(text: str, delimiter: str) -> str:
    """What LEEF can carry of a text: tabs, line breaks and other control characters, and the
    delimiter, as spaces; everything else as written."""
    return "".join(" " if c == delimiter or ord(c) < 0x20 or c in "\x7f\x85\u2028\u2029"
                   else c for c in text)


@pytest.mark.parametrize("delimiter", ["\t", "^"])
def test_leef_of_real_findings(docs, delimiter):
    for doc in docs:
        line = to_leef(doc, delimiter=delimiter)
        assert "\n" not in line and "\r" not in line
        header, delim, attrs = parse_leef(line)
        assert delim == delimiter
        assert header == list(leef_header(doc)) and attrs == leef_attributes(doc, delimiter)
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
    fi["analytic"].update(uid=t() or "x", name=t())
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
    assert header[4] == doc["finding_info"]["title"][:512]
    assert header[:3] == [doc["metadata"]["product"][k][:n] for k, n in
                          (("vendor_name", 63), ("name", 63), ("version", 31))]
    expected = {"externalId": doc["finding_info"]["uid"], "msg": doc["message"],
                "suser": user["name"], "suid": user["uid"],
                "act": doc["unmapped"]["secretscope"]["operation"],
                "requestClientApplication": doc["unmapped"]["secretscope"]["user_agent"],
                "fname": doc["resources"][0]["name"], "cs4": doc["finding_info"]["desc"]}
    expected = {k: v[:CEF_MAX[k]] for k, v in expected.items()}
    assert {k: ext.get(k, "") for k in expected} == expected
    check_cef_dictionary(header, ext)


@PROPS
@given(data=st.data(), delimiter=st.sampled_from(["\t", "^", "~", "\x01"]))
def test_leef_round_trips_any_text(base, data, delimiter):
    doc = data.draw(fuzzed(base))
    line = to_leef(doc, delimiter=delimiter)
    assert "\n" not in line and "\r" not in line
    header, delim, attrs = parse_leef(line)
    assert delim == delimiter
    assert header == list(leef_header(doc))
    assert attrs == leef_attributes(doc, delimiter)
    user = doc["actor"]["user"]
    expected = {"findingId": doc["finding_info"]["uid"], "title": doc["finding_info"]["title"],
                "msg": doc["message"], "userId": user["uid"],
                "src": doc["evidences"][0]["src_endpoint"]["ip"],
                "resource": doc["resources"][0]["name"],
                "realm": doc["resources"][0]["namespace"],
                "userAgent": doc["unmapped"]["secretscope"]["user_agent"],
                "reasons": doc["finding_info"]["desc"]}
    # as written, backslashes and all; only what would break the line or the pair is a space
    assert {k: attrs.get(k, "") for k in expected} == {
        k: leef_clean(v, delimiter) for k, v in expected.items()}
    product = doc["metadata"]["product"]
    assert header == [leef_clean(product["vendor_name"], "|"), leef_clean(product["name"], "|"),
                      leef_clean(product["version"], "|"),
                      leef_clean(doc["finding_info"]["analytic"]["uid"], "|")]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_ecs_of_any_text_matches_ecs_8_11(base, ecs_spec, data):
    doc = data.draw(fuzzed(base))
    ecs = to_ecs(doc)
    check_ecs(ecs, ecs_spec)
    assert ecs["message"] == doc["message"] and ecs["rule"]["id"] == \
        doc["finding_info"]["analytic"]["uid"]


@given(value=TEXT)
@settings(max_examples=200, deadline=None)
def test_cef_header_field_with_only_separators_round_trips(base, value):
    doc = copy.deepcopy(base)
    doc["finding_info"]["title"] = value
    doc["metadata"]["product"]["version"] = value
    header, _ = parse_cef(to_cef(doc))
    assert (header[2], header[4]) == (value[:31], value[:512])  # Device Version, Name lengths


def test_leef_rejects_an_unusable_delimiter(docs):
    for bad in ("|", "=", "\\", "\n", "a", "ab"):
        with pytest.raises(ValueError):
            to_leef(docs[0], delimiter=bad)


def test_leef_values_arrive_as_written(base):
    """LEEF has no escaping: a Windows account name keeps its backslash, an equals sign stays
    in the value; tabs and newlines (which would start a new pair or line) become spaces."""
    doc = copy.deepcopy(base)
    doc["actor"]["user"].update(name="CORP\\alice", uid="CORP\\alice")
    doc["message"] = "read a=b\tthen\nc\\n"
    _, _, attrs = parse_leef(to_leef(doc))
    assert attrs["usrName"] == attrs["userId"] == "CORP\\alice"
    assert attrs["msg"] == "read a=b then c\\n"
    assert "\\\\" not in to_leef(doc)


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
