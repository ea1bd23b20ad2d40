"""Detections as data: every rule file's positive and negative examples, and rule validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from secretscope.models.rules import compile_rule, load_rules
from secretscope.config import load_settings
from secretscope.errors import ConfigError
from secretscope.features import INDEX, FeatureExtractor, FeatureVector
from secretscope.segments import SegmentTable

from helpers import make_event

SETTINGS = load_settings()
RULES = load_rules(SETTINGS.rules_dir())
REQUIRED = {"vault-root-token-use", "vault-audit-device-change", "vault-first-acl-policy-write",
            "vault-denied-burst", "vault-failed-login-burst"}


def example_vector(example: dict) -> FeatureVector:
    fields = dict(example)
    features = fields.pop("features", {})
    if "policies" in fields:
        fields["policies"] = tuple(fields["policies"])
    fx = FeatureExtractor(SegmentTable((s.name, s.cidr) for s in SETTINGS.segments))
    fv = fx.observe(make_event(**fields))
    values = list(fv.values)
    for name, value in features.items():
        values[INDEX[name]] = float(value)
    return FeatureVector(fv.event, fv.segment, tuple(values))


def test_required_rules_exist_with_attack_and_examples():
    assert REQUIRED <= {r.id for r in RULES}
    for rule in RULES:
        assert rule.attack and rule.false_positives and rule.description
        assert rule.tests.get("positive") and rule.tests.get("negative"), rule.id


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_rule_examples(rule):
    for example in rule.tests["positive"]:
        assert rule.matches(example_vector(example)), f"{rule.id} missed {example}"
    for example in rule.tests["negative"]:
        assert not rule.matches(example_vector(example)), f"{rule.id} fired on {example}"


@pytest.mark.parametrize("doc, message", [
    ({"id": "x", "title": "t", "severity": "high", "reason": "R", "when": [{"field": "nope", "equals": 1}]},
     "unknown field 'nope'"),
    ({"id": "x", "title": "t", "severity": "urgent", "reason": "R", "when": [{"field": "path", "equals": 1}]},
     "severity must be one of"),
    ({"id": "x", "title": "t", "severity": "high", "reason": "R", "when": [{"field": "path", "like": "a"}]},
     "unknown operator 'like'"),
    ({"id": "x", "title": "t", "severity": "high", "reason": "R", "colour": "red", "when": [{"field": "path", "equals": "a"}]},
     "unknown key"),
    ({"id": "x", "title": "t", "severity": "high", "reason": "R", "when": [{"field": "path", "matches": "("}]},
     "bad regex"),
])
def test_bad_rules_fail_with_file_and_key(doc, message):
    with pytest.raises(ConfigError, match=message) as info:
        compile_rule(doc, "rules/bad.yaml")
    assert "rules/bad.yaml" in str(info.value)


def test_duplicate_rule_ids_rejected(tmp_path: Path):
    body = "id: same\ntitle: t\nseverity: low\nreason: R\nwhen: [{field: path, equals: a}]\n"
    (tmp_path / "a.yaml").write_text(body)
    (tmp_path / "b.yaml").write_text(body)
    with pytest.raises(ConfigError, match="duplicate rule ids"):
        load_rules(tmp_path)
