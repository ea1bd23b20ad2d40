"""Explicit detections loaded from YAML, one rule per file.

A rule is data: id, title, severity, ATT&CK techniques, false-positive notes, a condition over
event fields and features, and positive/negative example events that the test suite replays.
Conditions are compiled once into plain predicates; there is no ``eval``.

Condition clauses (all must hold)::

    when:
      - {field: path, prefix: ["sys/audit/", "sys/audit"]}
      - {field: operation, in: [create, update, delete]}
      - {field: denied_count_5m, gte: 20}

``field`` is an :class:`~secretscope.events.AccessEvent` attribute (``operation``, ``path``,
``outcome``, ``is_root``, ``is_login``, ...), ``segment``, ``secret_access`` (true for calls on
secrets, false for ``sys/``, ``auth/`` and other control paths), or a feature name. Operators:
``equals``, ``in``, ``not_in``, ``prefix``, ``matches`` (regex search), ``gte``, ``gt``, ``lte``.

Each clause is type-checked when the rule loads (so ``secretscope validate`` and start-up catch
it, not the first event it meets): features and ``ts`` are numbers (every operator but
``prefix``/``matches``; values are numbers, not true/false), text fields take ``equals``,
``in``, ``not_in``, ``prefix`` and ``matches`` with strings, ``is_root``, ``is_login`` and
``secret_access`` take ``equals``/``in``/``not_in`` with true or false; list fields
(``policies``, ``truncated``) take no operator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import yaml

from secretscope.errors import ConfigError
from secretscope.events import AccessEvent
from secretscope.features import INDEX, FeatureVector, is_secret_access
from secretscope.findings import SEVERITY_IDS

SEVERITIES = SEVERITY_IDS  # the names a rule's ``severity`` may take
RELATED = ("trigger", "denied_5m", "login_failed_5m", "recent_1h")
_EVENT_FIELDS = set(AccessEvent.__struct_fields__) | {"is_root"}
_RULE_KEYS = {"id", "title", "description", "severity", "reason", "attack", "false_positives",
              "when", "related", "explain", "tests"}
Predicate = Callable[[FeatureVector], bool]
_EVENT = attrgetter("event")


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    description: str
    severity_id: int
    reason: str
    attack: tuple[str, ...]
    false_positives: str
    related: str
    explain: tuple[str, ...]
    predicate: Predicate = field(repr=False, compare=False)
    tests: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False, compare=False)
    source: str = ""
    # The rule's first "feature >= number" (or >) clause as (column, threshold): checked inline
    # before the predicate, since most events fail it and a call costs more than a comparison.
    gate: tuple[int, float] | None = field(default=None, compare=False)
    # Without one: an "event field equals / in" clause as (field, allowed values).
    event_gate: tuple[str, frozenset] | None = field(default=None, compare=False)
    # Every "feature gte / gt / lte number" clause as (column, operator, number): a batch is
    # screened on them with array comparisons; the predicate then decides on the rows left.
    thresholds: tuple[tuple[int, str, float], ...] = field(default=(), compare=False)

    def matches(self, fv: FeatureVector) -> bool:
        return self.predicate(fv)


# What each field a clause may name holds, so a comparison that cannot work (a number against
# a text field, a prefix of a number) fails when the rule loads, not at the first event it meets.
NUMBER, TEXT, FLAG, LIST = "a number", "text", "true or false", "a list of strings"
_KIND_OF_TYPE = {float: NUMBER, int: NUMBER, str: TEXT, bool: FLAG}
FIELD_KINDS: dict[str, str] = {
    **{f.name: _KIND_OF_TYPE.get(f.type, LIST) for f in msgspec.structs.fields(AccessEvent)},
    "is_root": FLAG, "segment": TEXT, "secret_access": FLAG,
    **{name: NUMBER for name in INDEX},
}
# The kinds each operator compares, and what its value must be.
_OPERATOR_KINDS = {"equals": (NUMBER, TEXT, FLAG), "in": (NUMBER, TEXT, FLAG),
                   "not_in": (NUMBER, TEXT, FLAG), "prefix": (TEXT,), "matches": (TEXT,),
                   "gte": (NUMBER,), "gt": (NUMBER,), "lte": (NUMBER,)}


def _getter(name: str, where: str) -> Callable[[FeatureVector], Any]:
    if name in INDEX:
        i = INDEX[name]
        return lambda fv: fv.values[i]
    if name == "segment":
        return lambda fv: fv.segment
    if name == "secret_access":
        return lambda fv: is_secret_access(fv.event)
    if name in _EVENT_FIELDS:
        return lambda fv: getattr(fv.event, name)
    raise ConfigError(f"{where}: unknown field {name!r} (an event field, 'segment', "
                      "'secret_access' or a feature)")


def _kind_of_value(value: Any) -> str | None:
    if isinstance(value, bool):  # before int: YAML true is a bool, and bool is an int
        return FLAG
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    return None


def _check_types(name: str, op: str, value: Any, where: str) -> None:
    """Raise ConfigError when operator ``op`` with ``value`` cannot compare field ``name``."""
    kind = FIELD_KINDS[name]
    if kind not in _OPERATOR_KINDS[op]:
        hint = " (is_root tests for the root policy)" if name == "policies" else ""
        raise ConfigError(f"{where}: {op!r} does not apply to {name!r}, which holds {kind}{hint}")
    values = value if op in ("in", "not_in") or (op == "prefix" and isinstance(value, list)) \
        else [value]
    for v in values:
        if _kind_of_value(v) != kind:
            shown = f"{type(v).__name__} {v!r}" if _kind_of_value(v) else repr(v)
            raise ConfigError(f"{where}: {name!r} holds {kind}, but {op!r} compares it with "
                              f"{shown}")


def _clause(spec: Any, where: str) -> Predicate:
    if not isinstance(spec, dict) or "field" not in spec or len(spec) != 2 \
            or not isinstance(spec["field"], str):
        raise ConfigError(f"{where}: a clause is {{field: NAME, OPERATOR: VALUE}}, got {spec!r}")
    get = _getter(spec["field"], where)
    (op, value), = ((k, v) for k, v in spec.items() if k != "field")
    if op not in _OPERATOR_KINDS:
        raise ConfigError(f"{where}: unknown operator {op!r} (one of "
                          f"{', '.join(_OPERATOR_KINDS)})")
    if op in ("in", "not_in") and not isinstance(value, list):
        raise ConfigError(f"{where}: {op!r} takes a list")
    _check_types(spec["field"], op, value, where)
    if op == "equals":
        return lambda fv: get(fv) == value
    if op in ("in", "not_in"):
        members = frozenset(value)
        if op == "in":
            return lambda fv: get(fv) in members
        return lambda fv: get(fv) not in members
    if op == "prefix":
        prefixes = tuple(value) if isinstance(value, list) else (value,)
        return lambda fv: get(fv).startswith(prefixes)
    if op == "matches":
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{where}: bad regex {value!r}: {exc}") from None
        return lambda fv: pattern.search(get(fv)) is not None
    if op == "gte":
        return lambda fv: get(fv) >= value
    if op == "gt":
        return lambda fv: get(fv) > value
    return lambda fv: get(fv) <= value


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def compile_rule(doc: Any, source: str) -> Rule:
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a rule file holds one mapping")
    unknown = set(doc) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}")
    for key in ("id", "title", "severity", "reason", "when"):
        if key not in doc:
            raise ConfigError(f"{source}: missing key {key!r}")
    if not isinstance(doc["severity"], str) or doc["severity"] not in SEVERITIES:
        raise ConfigError(f"{source}: severity must be one of {list(SEVERITIES)}")
    related = doc.get("related", "trigger")
    if related not in RELATED:
        raise ConfigError(f"{source}: related must be one of {RELATED}")
    for key in ("attack", "explain"):
        if not _is_text_list(doc.get(key, [])):
            raise ConfigError(f"{source}: {key!r} is a list of names")
    if not isinstance(doc.get("tests") or {}, dict):
        raise ConfigError(f"{source}: 'tests' maps positive/negative to example events")
    when = doc["when"]
    if not isinstance(when, list) or not when:
        raise ConfigError(f"{source}: 'when' is a non-empty list of clauses")
    clauses = [_clause(c, f"{source}: when[{i}]") for i, c in enumerate(when)]
    explain = tuple(doc.get("explain", ()))
    for name in explain:
        if name not in INDEX:
            raise ConfigError(f"{source}: explain names unknown feature {name!r}")

    def predicate(fv: FeatureVector) -> bool:
        for clause in clauses:
            if not clause(fv):
                return False
        return True

    gate = event_gate = None
    for c in when:
        op = next((k for k in c if k != "field"), None)
        if c.get("field") in INDEX and op in ("gte", "gt"):
            value = float(c[op])
            # x > v is x >= the next float above v
            gate = (INDEX[c["field"]], value if op == "gte" else math.nextafter(value, math.inf))
            break
    else:
        # no threshold clause: gate on an event field's value instead, e.g. operation in [...]
        for c in when:
            op = next((k for k in c if k != "field"), None)
            if c.get("field") in _EVENT_FIELDS and op in ("equals", "in"):
                values = c[op] if op == "in" else [c[op]]
                try:
                    event_gate = (c["field"], frozenset(values))
                except TypeError:  # unhashable values: the predicate alone decides
                    continue
                break

    thresholds = tuple((INDEX[c["field"]], op, float(c[op])) for c in when
                       for op in [next(k for k in c if k != "field")]
                       if c["field"] in INDEX and op in ("gte", "gt", "lte"))

    return Rule(
        thresholds=thresholds, gate=gate, event_gate=event_gate if gate is None else None,
        id=str(doc["id"]), title=str(doc["title"]), description=str(doc.get("description", "")),
        severity_id=SEVERITIES[doc["severity"]], reason=str(doc["reason"]),
        attack=tuple(doc.get("attack", ())), false_positives=str(doc.get("false_positives", "")),
        related=related, explain=explain, predicate=predicate, tests=doc.get("tests") or {},
        source=source,
    )


# libyaml's safe loader builds the same documents as PyYAML's, about 8x faster: the rule files
# are read at every start-up
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_rules(directory: Path) -> list[Rule]:
    """Every ``*.yaml`` in ``directory``, sorted by file name; ids must be unique."""
    if not directory.is_dir():
        raise ConfigError(f"rules directory {directory} does not exist")
    rules: list[Rule] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            doc = yaml.load(path.read_text(), Loader=_SAFE_LOADER)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        rules.append(compile_rule(doc, str(path)))
    ids = [r.id for r in rules]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ConfigError(f"{directory}: duplicate rule ids {sorted(duplicates)}")
    return rules


class RuleSet:
    """Evaluates every rule on every row of a batch. Rules keep no state."""

    name = "rules"

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._gated = [(r, r.gate[0], r.gate[1]) for r in self.rules if r.gate is not None]
        self._event_gated = [(r, *r.event_gate) for r in self.rules if r.event_gate is not None]
        self._ungated = [r for r in self.rules if r.gate is None and r.event_gate is None]
        self._order = {r.id: i for i, r in enumerate(self.rules)}
        self._screened = [r for r in self.rules if r.thresholds]
        self._screen = _Screen(self._screened)
        self._event_gated_only = [(r, *r.event_gate) for r in self.rules
                                  if not r.thresholds and r.event_gate is not None]
        self._unscreened = [r for r in self.rules if not r.thresholds and r.event_gate is None]

    def evaluate_one(self, fv: FeatureVector) -> tuple[Rule, ...]:
        values = fv.values
        hits = [r for r, col, floor in self._gated if values[col] >= floor and r.predicate(fv)]
        event = fv.event
        for r, name, allowed in self._event_gated:
            if getattr(event, name) in allowed and r.predicate(fv):
                hits.append(r)
        for r in self._ungated:
            if r.predicate(fv):
                hits.append(r)
        if len(hits) > 1:
            hits.sort(key=lambda r: self._order[r.id])  # file order, as before gating
        return tuple(hits)

    def evaluate_batch(self, batch: Sequence[FeatureVector],
                       values: np.ndarray) -> list[tuple[Rule, ...]]:
        """``evaluate_one`` of every row; ``values`` is the batch's (rows x features) matrix.

        A rule's threshold clauses are checked for all rows at once (array comparisons), so its
        predicate runs only on the few rows that meet them all; rules without one are gated on
        their event field as in ``evaluate_one``."""
        n = len(batch)
        found: dict[int, list[Rule]] = {}
        if self._screened and n:
            rows, which = np.nonzero(self._screen.candidates(values))
            for i, k in zip(rows.tolist(), which.tolist()):
                r = self._screened[k]
                if r.predicate(batch[i]):
                    found.setdefault(i, []).append(r)
        events = list(map(_EVENT, batch)) if self._event_gated_only else []
        for r, name, allowed in self._event_gated_only:
            gated = map(allowed.__contains__, map(attrgetter(name), events))
            for i in compress(range(n), gated):
                if r.predicate(batch[i]):
                    found.setdefault(i, []).append(r)
        for r in self._unscreened:
            for i, fv in enumerate(batch):
                if r.predicate(fv):
                    found.setdefault(i, []).append(r)
        hits: list[tuple[Rule, ...]] = [()] * n
        for i, rules in found.items():
            if len(rules) > 1:
                rules.sort(key=lambda r: self._order[r.id])
            hits[i] = tuple(rules)
        return hits


class _Screen:
    """The threshold clauses of a list of rules as arrays, ordered by rule: ``candidates``
    gives, per row and rule, whether the row meets all the rule's threshold clauses.

    Every clause is turned into ``sign * x >= bound``, which holds exactly when the clause
    does (``x > v`` is ``x >= the next float above v``, ``x <= v`` is ``-x >= -v``; NaN meets
    none), so one comparison covers them all and ``logical_and.reduceat`` each rule's share."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        cols, signs, bounds, starts = [], [], [], []
        for r in rules:
            starts.append(len(cols))
            for col, op, value in r.thresholds:
                cols.append(col)
                signs.append(-1.0 if op == "lte" else 1.0)
                bounds.append(-value if op == "lte" else
                              math.nextafter(value, math.inf) if op == "gt" else value)
        self.cols = np.array(cols, dtype=np.intp)
        self.signs = np.array(signs)
        self.bounds = np.array(bounds)
        self.starts = np.array(starts, dtype=np.intp)

    def candidates(self, values: np.ndarray) -> np.ndarray:
        met = values[:, self.cols] * self.signs >= self.bounds
        return np.logical_and.reduceat(met, self.starts, axis=1)
