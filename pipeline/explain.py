"""Why a finding was raised, in terms an analyst can check: observed vs. usual for the identity,
the unusual factors with their frequency class for the identity and for its peers, and the peer
group it was compared with.

Explanations are read from the feature vector (what the detectors saw) and from the identity's
baseline as it was when the event was scored (the runner makes sure of that).
"""

from __future__ import annotations

from secretscope.models.rules import Rule
from secretscope.features import INDEX, FeatureVector, IdentityState
from secretscope.findings import Factor, PeerComparison, Reason
from secretscope.novelty import (DIMENSIONS, FREQUENCY_CLASSES, PEER_DIMENSIONS, RARE, SECRET,
                              SEGMENT, UNSEEN, USER_AGENT, FOLDER)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MAX_REASONS = 6
# What a baseline is about, in an analyst's words: every baseline text names its dimension.
_PLURAL = {"secret": "secrets", "folder": "folders", "operation": "operations",
           "segment": "network segments", "ip": "source addresses", "user_agent": "user agents",
           "auth_method": "auth methods", "mount": "mounts"}
_LABELS = {
    "requests_count_1m": "requests per minute", "requests_count_1h": "requests per hour",
    "requests_count_24h": "requests per day", "secrets_distinct_1h": "distinct secrets per hour",
    "secrets_distinct_24h": "distinct secrets per day",
    "secrets_ratio_1h": "distinct secrets per hour", "denied_count_5m": "denied requests",
    "denied_ratio_1h": "denied requests", "denied_distinct_1h": "denied secrets",
    "login_failed_count_5m": "failed logins", "list_to_read_ratio_1h": "lists per read",
    "dynamic_creds_count_10m": "dynamic credential requests", "history_events": "history",
    "idle_days": "activity", "novelty_score": "new values",
    "policy_write_first_seen": "policy writes", "policy_write_peer_first_seen": "policy writes",
    "policy_write_own": "policy writes", "policy_writer_role": "policy writes",
    "peer_members": "peer group",
    "peer_history": "peer group", "peer_folders_known": "folders",
    "requests_baseline_1h": "requests per hour", "networks_15m": "networks",
    "network_unfamiliar": "networks", "role_new_secrets_1h": "secrets new for the role",
    "role_new_secrets_24h": "secrets new for the role", "secrets_known": "secrets",
    "environment_crossing": "environments",
    "folders_known": "folders",
}


def dimension_label(feature: str) -> str:
    """The dimension a feature measures (``segment_freq_class`` -> network segments)."""
    for name, plural in _PLURAL.items():
        if feature in (f"{name}_freq_class", f"{name}_peer_freq_class", f"{name}_first_seen"):
            return plural
    return _LABELS.get(feature, feature.replace("_", " "))


def factors(fv: FeatureVector) -> tuple[Factor, ...]:
    """Dimensions whose value is rare or unseen for the identity, unseen-by-peers first."""
    if not fv.keys:
        return ()
    values = fv.values
    found = []
    for d, name in enumerate(DIMENSIONS):
        key = fv.keys[d]
        cls = int(values[INDEX[f"{name}_freq_class"]])
        if key is None or cls < RARE:
            continue
        peer_cls = (int(values[INDEX[f"{name}_peer_freq_class"]]) if d in PEER_DIMENSIONS
                    else None)
        found.append(((peer_cls == UNSEEN, cls), Factor(
            name, str(key), FREQUENCY_CLASSES[cls],
            FREQUENCY_CLASSES[peer_cls] if peer_cls is not None else None)))
    found.sort(key=lambda item: item[0], reverse=True)
    return tuple(f for _, f in found)


def peer_comparison(state: IdentityState | None) -> PeerComparison | None:
    if state is None or state.peer is None:
        return None
    peer = state.peer
    return PeerComparison(peer.key, len(peer.members), peer.history)


def hour_label(ts: float) -> str:
    hour = int(ts // 3600)
    return f"{_DAYS[(hour // 24 + 3) % 7]} {hour % 24:02d}:00 UTC"


def _hours(hours: list[int]) -> str:
    return ", ".join(f"{h:02d}h" for h in sorted(hours)) or "none yet"


def _known(state: IdentityState, d: int) -> str:
    peer = state.peer
    mine = len(state.counts[d])
    what = _PLURAL[DIMENSIONS[d]]
    if peer is None or d not in PEER_DIMENSIONS:
        return f"{mine} {what} known to the identity"
    theirs = len(peer.counts[PEER_DIMENSIONS.index(d)])
    return f"{mine} {what} known to the identity, {theirs} to its {len(peer.members)} peers"


def baseline_of(feature: str, fv: FeatureVector, state: IdentityState | None) -> str:
    """What is usual for the identity, for a feature a rule names; the text names the
    dimension it is about."""
    label = dimension_label(feature) if feature else "history"
    if state is None or not state.history:
        if state is not None and state.peer is not None and state.peer.history:
            return (f"{label}: no history of its own; peers {state.peer.key} "
                    f"({state.peer.history} events)")
        return f"{label}: no history"
    if feature in ("requests_count_1h", "requests_baseline_1h"):
        return f"usual {state.requests_baseline:.1f} requests per hour"
    if feature in ("secrets_distinct_1h", "secrets_ratio_1h"):
        return f"usual {state.secrets_baseline:.1f} distinct secrets per hour"
    if feature == "history_events":
        return f"history: {state.history} events, none of this kind"
    if feature == "idle_days":
        return (f"activity: on {len([c for c in state.how if c])} hours of the week "
                "until it went quiet")
    for d, name in enumerate(DIMENSIONS):
        if feature in (f"{name}_freq_class", f"{name}_peer_freq_class"):
            return _known(state, d)
    if feature in ("peer_members", "peer_history") and state.peer is not None:
        return f"peer group {state.peer.key}"
    if feature in ("networks_15m", "network_unfamiliar"):
        usual = sorted(state.places.items(), key=lambda kv: -kv[1])[:4]
        where = ", ".join(f"{net} {n / state.history:.0%}" for net, n in usual) or "none"
        now = f", calls in the last 15 minutes from {', '.join(fv.concurrent)}" \
            if fv.concurrent else ""
        return f"networks: one at a time{now}, usually {where} ({len(state.places)} known)"
    if feature in ("role_new_secrets_1h", "role_new_secrets_24h"):
        return _known(state, DIMENSIONS.index("secret"))
    if feature == "dynamic_creds_count_10m":
        return f"dynamic credential requests: usual {state.requests_baseline:.1f} requests/h in all"
    return f"{label}: {state.history} events of history"


def _observed(name: str, value: float) -> str:
    if name.endswith("freq_class"):
        return f"{name}={FREQUENCY_CLASSES[int(value)]}"
    return f"{name}={value:g}"


def rule_reason(rule: Rule, fv: FeatureVector, state: IdentityState | None) -> Reason:
    observed = [f"{fv.event.operation} {fv.event.path}"]
    baseline = []
    for name in rule.explain:
        observed.append(_observed(name, fv[name]))
        baseline.append(baseline_of(name, fv, state))
    return Reason(code=rule.reason, detector=rule.id, text=rule.title,
                  observed=", ".join(observed),
                  baseline="; ".join(dict.fromkeys(baseline)) or baseline_of("", fv, state))


def _factor_reason(detector: str, f: Factor, fv: FeatureVector,
                   state: IdentityState) -> tuple[float, Reason]:
    d = DIMENSIONS.index(f.dimension)
    peers = f", {f.peer_frequency} for its peers" if f.peer_frequency else ""
    strength = 1.0 if f.frequency == "unseen" else 0.6
    if f.peer_frequency == "unseen":
        strength += 0.2
    if d == SEGMENT:
        usual = ", ".join(f"{n} {s:.0%}" for n, s in state.usual_segments()) or "none"
        baseline = f"network segments: usually {usual}"
    else:
        baseline = _known(state, d)
    label = f.dimension.replace("_", " ")
    code = f"{f.dimension.upper()}_{f.frequency.upper()}"
    if d in (SECRET, FOLDER, USER_AGENT, SEGMENT) and f.peer_frequency == "unseen":
        code += "_FOR_PEERS"
    observed = f"{f.value} ({fv.event.remote_address})" if d == SEGMENT else f.value
    title = f"{label.capitalize()} {f.frequency} for this identity{peers}"
    return strength, Reason(code, detector, title, observed, baseline)


def streaming_reasons(detector: str, fv: FeatureVector,
                      state: IdentityState | None) -> list[Reason]:
    """The unusual factors of an event for its identity, strongest first."""
    e = fv.event
    if state is None or not state.history:
        group = state.peer if state is not None else None
        if group is None or not group.history:
            return [Reason("NO_BASELINE", detector, "Identity and its peers have no baseline yet",
                           "first events", "none")]
        cold = [Reason("NEW_IDENTITY", detector, "New identity, compared with its peers",
                       f"first events of {e.display_name or e.identity}",
                       f"peer group {group.key}: {len(group.members)} identities, "
                       f"{group.history} events")]
        for f in factors(fv):
            if f.peer_frequency in ("unseen", "rare"):
                cold.append(Reason(f"{f.dimension.upper()}_{f.peer_frequency.upper()}_FOR_PEERS",
                                   detector, f"{f.dimension.replace('_', ' ').capitalize()} "
                                   f"{f.peer_frequency} for its peers", f.value,
                                   f"{_PLURAL[f.dimension]} of peer group {group.key}"))
        return cold[:_MAX_REASONS]
    candidates: list[tuple[float, Reason]] = [
        _factor_reason(detector, f, fv, state) for f in factors(fv)
        if f.dimension not in ("ip", "operation") or f.frequency == "unseen"]
    how_share = fv["hour_of_week_share"]
    if how_share * 56.0 < 0.25:
        candidates.append((1.0 - how_share * 56.0, Reason(
            "HOUR_UNUSUAL", detector, "Active at an hour unusual for this identity",
            f"{hour_label(e.ts)} ({how_share:.1%} of history in this hour +-1h)",
            f"working hours {_hours(state.working_hours())} UTC; "
            f"peers {fv['hour_of_day_peer_share']:.0%} in this hour of day")))
    rate, rate_base = fv["requests_count_1h"], fv["requests_baseline_1h"]
    if rate > 3.0 * (rate_base + 1.0):
        candidates.append((min(1.0, rate / (10.0 * (rate_base + 1.0))), Reason(
            "RATE_ABOVE_BASELINE", detector, "Request rate far above this identity's usual",
            f"{rate:g} requests in 1h", f"usual {rate_base:.1f} requests per hour")))
    breadth, breadth_base = fv["secrets_distinct_1h"], fv["secrets_baseline_1h"]
    if breadth > 3.0 * (breadth_base + 1.0):
        candidates.append((min(1.0, breadth / (10.0 * (breadth_base + 1.0))), Reason(
            "BREADTH_ABOVE_BASELINE", detector, "Many more distinct secrets than usual",
            f"{breadth:g} distinct secrets in 1h",
            f"usual {breadth_base:.1f} distinct secrets per hour")))
    if fv["denied_ratio_1h"] >= 0.3:
        candidates.append((fv["denied_ratio_1h"], Reason(
            "DENIED_RATIO_HIGH", detector, "Many requests denied",
            f"{fv['denied_ratio_1h']:.0%} denied in 1h, "
            f"{fv['denied_distinct_1h']:g} distinct secrets denied",
            "denied requests: usually none")))
    if fv["idle_days"] >= 2.0:
        candidates.append((min(1.0, fv["idle_days"] / 7.0), Reason(
            "DORMANT_REACTIVATED", detector, "Identity active again after days of silence",
            f"{fv['idle_days']:.1f} days since its last call", "activity: daily before")))
    candidates.sort(key=lambda c: -c[0])
    reasons = [r for _, r in candidates[:_MAX_REASONS]]
    return reasons or [Reason("UNUSUAL_COMBINATION", detector,
                              "Unusual combination of features for this identity",
                              "see features", f"history: {state.history} events")]


def explainer(detector):
    """Detector-specific reasons for triage, or None for the default (``streaming_reasons``).
    Detectors that can say which measure drove a row's score (``explain_row``) are explained by
    it: observed value against the identity's usual median and spread."""
    explain_row = getattr(detector, "explain_row", None)
    if explain_row is None:
        return None

    def explain(name: str, fv: FeatureVector, state: IdentityState | None,
                row: int) -> list[Reason]:
        measures = explain_row(row)
        reasons = []
        for m in measures[:2]:
            if reasons and m.z < 2.0:
                break
            mad = "" if m.mad != m.mad else f", MAD {m.mad:g}"  # NaN: not kept below threshold
            reasons.append(Reason(
                f"{m.measure.upper()}_ABOVE_BASELINE", name,
                f"{m.measure} far above this identity's usual hourly peak",
                f"{m.measure} = {m.observed:g}",
                f"{m.measure}: usual median {m.median:g}{mad} over its recent active hours"))
        return reasons or streaming_reasons(name, fv, state)

    return explain
