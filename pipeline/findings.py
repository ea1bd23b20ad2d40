"""The alert model and its OCSF rendering.

A :class:`Finding` says who did what, why that is unusual for that identity (reasons with
observed vs. baseline values), how severe, which ATT&CK techniques, and which source events it is
about. Its id is deterministic (detectors + identity + triggering event id), so a replay yields
the same ids and downstream systems can dedupe on them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from secretscope import __version__
from secretscope.events import AccessEvent

OCSF_VERSION = "1.3.0"
# The lifecycle of a finding: every version is one OCSF document with the same finding id.
CREATE, UPDATE, CLOSE = 1, 2, 3
ACTIVITY_NAMES = {CREATE: "Create", UPDATE: "Update", CLOSE: "Close"}
NEW, IN_PROGRESS, RESOLVED = 1, 2, 4  # OCSF status_id
STATUS_NAMES = {NEW: "New", IN_PROGRESS: "In Progress", RESOLVED: "Resolved"}
SEVERITY_NAMES = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High",
                  5: "Critical", 6: "Fatal", 99: "Other"}
# The severities config files and rule files name, lower case, to their OCSF severity_id.
SEVERITY_IDS = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
# Names of the techniques secretscope maps to (MITRE ATT&CK Enterprise). A sub-technique
# (``T1562.008``) carries its own name; its parent technique and tactic come from the parent's
# entry, so SIEMs get the technique and the sub-technique each in its own field.
TECHNIQUES = {
    "T1078": ("Valid Accounts", "TA0001", "Initial Access"),
    "T1098": ("Account Manipulation", "TA0003", "Persistence"),
    "T1110": ("Brute Force", "TA0006", "Credential Access"),
    "T1555": ("Credentials from Password Stores", "TA0006", "Credential Access"),
    "T1552": ("Unsecured Credentials", "TA0006", "Credential Access"),
    "T1083": ("File and Directory Discovery", "TA0007", "Discovery"),
    "T1528": ("Steal Application Access Token", "TA0006", "Credential Access"),
    "T1550": ("Use Alternate Authentication Material", "TA0008", "Lateral Movement"),
    "T1562": ("Impair Defenses", "TA0005", "Defense Evasion"),
    "T1562.008": ("Disable or Modify Cloud Logs", "TA0005", "Defense Evasion"),
}
ATTACK_URL = "https://attack.mitre.org/"
# OCSF analytic type_id and its enum caption (OCSF 1.3.0 ``analytic.type_id``).
RULE_ANALYTIC, LEARNED_ANALYTIC = (1, "Rule"), (4, "Learning (ML/DL)")
# OCSF confidence_id from confidence_score (0-100): 1 Low, 2 Medium, 3 High.
CONFIDENCE_NAMES = {0: "Unknown", 1: "Low", 2: "Medium", 3: "High"}


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a finding was raised: a code, what was observed, what is usual. ``weight`` is
    the calibrated score of the firing it came from (``models.ensemble``): reasons are listed
    strongest first, so a high rule leads a low signal."""

    code: str
    detector: str
    text: str
    observed: str
    baseline: str
    weight: float = 0.0


@dataclass(frozen=True, slots=True)
class Factor:
    """A value of one dimension that is rare or unseen for the identity (and maybe its peers)."""

    dimension: str  # secret, folder, operation, segment, ip, user_agent, auth_method, mount
    value: str
    frequency: str  # for the identity: frequent, infrequent, rare, unseen
    peer_frequency: str | None  # for its peer group; None where peers are not compared


@dataclass(frozen=True, slots=True)
class PeerComparison:
    """The peer group (identities with the same policies) the identity was compared with."""

    group: str
    members: int
    history: int


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    time: datetime
    identity: str
    display_name: str
    title: str
    severity_id: int
    score: float  # 0..1, higher = more anomalous
    detectors: tuple[str, ...]
    reasons: tuple[Reason, ...]
    techniques: tuple[str, ...]
    related_event_ids: tuple[str, ...]
    trigger: AccessEvent
    segment: str
    factors: tuple[Factor, ...] = ()
    peers: PeerComparison | None = None
    last_time: datetime | None = None  # last event merged into this incident (None: trigger)
    merged: int = 0  # later firings of the same incident merged into this finding
    learning: bool = False  # a learned model (not only rules) contributed
    learned: tuple[str, ...] = ()  # which of ``detectors`` are learned models (not rules)
    headline: str = ""  # the title of the strongest firing, without the "(+N more)" suffix
    # The version this value is of: 1 is the Create; each Update or Close adds one.
    version: int = 1
    activity_id: int = CREATE
    status_id: int = NEW
    raised: bool = False  # this version raised the severity of the previous one
    closed_time: datetime | None = None  # when the incident was closed (event time)
    status_note: str = ""  # an analyst's note with a status change

    @property
    def severity(self) -> str:
        return SEVERITY_NAMES[self.severity_id]


def titled(headline: str, detectors: tuple[str, ...]) -> str:
    """A finding's title: its strongest firing's, and how many other detectors agreed."""
    return headline + (f" (+{len(detectors) - 1} more)" if len(detectors) > 1 else "")


def finding_id(detectors: tuple[str, ...], identity: str, trigger_event_id: str) -> str:
    """Deterministic UUID-shaped id: same detectors, identity and trigger -> same id."""
    key = "\x1f".join((",".join(sorted(detectors)), identity, trigger_event_id))
    return str(uuid.UUID(bytes=hashlib.sha256(key.encode()).digest()[:16], version=5))


def _epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _evidence(identity: str, name: str, remote_address: str) -> dict[str, Any]:
    evidence: dict[str, Any] = {"actor": {"user": {"uid": identity, "name": name}}}
    try:
        evidence["src_endpoint"] = {"ip": str(ipaddress.ip_address(remote_address))}
    except ValueError:  # none recorded, or not an address OCSF's ip_t accepts
        pass
    return evidence


def version_time(f: Finding) -> datetime:
    """Event time of a version: the trigger's for the Create, the newest merged firing's for an
    Update, the closing time for a Close."""
    if f.activity_id == CLOSE and f.closed_time is not None:
        return f.closed_time
    return f.last_time or f.time if f.activity_id != CREATE else f.time


def technique_url(uid: str) -> str:
    """The ATT&CK page of a technique or sub-technique (``T1562.008`` -> ``.../T1562/008/``)."""
    return f"{ATTACK_URL}techniques/{uid.replace('.', '/')}/"


def attack_of(uid: str) -> dict[str, Any]:
    """An OCSF ``attack``: a sub-technique under its parent technique, with the tactic."""
    parent = uid.split(".", 1)[0]
    name, tactic_uid, tactic = TECHNIQUES.get(uid, ("", "", ""))
    attack: dict[str, Any] = {}
    if parent != uid:
        attack["technique"] = {"uid": parent, "name": TECHNIQUES.get(parent, ("",))[0],
                               "src_url": technique_url(parent)}
        attack["sub_technique"] = {"uid": uid, "name": name, "src_url": technique_url(uid)}
    else:
        attack["technique"] = {"uid": uid, "name": name, "src_url": technique_url(uid)}
    if tactic_uid:
        attack["tactic"] = {"uid": tactic_uid, "name": tactic,
                            "src_url": f"{ATTACK_URL}tactics/{tactic_uid}/"}
    return attack


def analytic_of(f: Finding, detector: str) -> dict[str, Any]:
    """One detector as an OCSF ``analytic``: its stable id as ``uid`` and ``name``."""
    type_id, type_name = LEARNED_ANALYTIC if detector in f.learned else RULE_ANALYTIC
    return {"uid": detector, "name": detector, "type_id": type_id, "type": type_name}


def confidence_id(score: int) -> int:
    return 3 if score >= 80 else 2 if score >= 50 else 1


def to_ocsf(f: Finding) -> dict[str, Any]:
    """OCSF Detection Finding (class 2004) for one version of a finding: activity Create, Update
    or Close, its status, and the version number under ``unmapped.secretscope.version``. The
    leading detector (the strongest firing's) is ``finding_info.analytic``, the others are
    ``finding_info.related_analytics``."""
    e = f.trigger
    attacks = [attack_of(tid) for tid in f.techniques]
    confidence = round(f.score * 100)
    desc = "; ".join(f"{r.text} (observed {r.observed}; baseline {r.baseline})" for r in f.reasons)
    activity = ACTIVITY_NAMES[f.activity_id]
    doc: dict[str, Any] = {
        "activity_id": f.activity_id,
        "activity_name": activity,
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 200400 + f.activity_id,
        "type_name": f"Detection Finding: {activity}",
        "severity_id": f.severity_id,
        "severity": f.severity,
        "status_id": f.status_id,
        "status": STATUS_NAMES[f.status_id],
        "time": _epoch_ms(version_time(f)),
        "confidence_id": confidence_id(confidence),
        "confidence": CONFIDENCE_NAMES[confidence_id(confidence)],
        "confidence_score": confidence,
        "message": f"{f.title}: {f.display_name or f.identity} {e.operation} {e.secret}",
        "metadata": {
            "version": OCSF_VERSION,
            "uid": f.id,
            "product": {"name": "secretscope", "vendor_name": "secretscope",
                        "version": __version__},
            "log_name": e.source,
            "profiles": ["host"],
        },
        "finding_info": {
            "uid": f.id,
            "title": f.title,
            "desc": desc,
            "types": list(dict.fromkeys(r.code for r in f.reasons)),
            "analytic": analytic_of(f, f.detectors[0]),
            "attacks": attacks,
            "first_seen_time": _epoch_ms(f.time),
            "last_seen_time": _epoch_ms(f.last_time or f.time),
            "related_events": [{"uid": uid} for uid in f.related_event_ids],
        },
        # OCSF 1.3.0 has ``actor`` on a finding only through the host profile, and the source
        # endpoint only inside ``evidences`` (checked by secretscope.delivery.renderings.validate_ocsf)
        "actor": {"user": {"uid": f.identity, "name": f.display_name}},
        "evidences": [_evidence(f.identity, f.display_name, e.remote_address)],
        "resources": [{"name": e.secret, "type": "secret", "namespace": e.namespace or "root"}],
        "unmapped": {
            "secretscope": {
                "detectors": list(f.detectors),
                "score": round(f.score, 4),
                "segment": f.segment,
                "operation": e.operation,
                "path": e.path,
                "outcome": e.outcome,
                "user_agent": e.user_agent,
                "trigger_event_uid": e.event_id,
                "reasons": [
                    {"code": r.code, "detector": r.detector, "text": r.text,
                     "observed": r.observed, "baseline": r.baseline}
                    for r in f.reasons
                ],
                "factors": [
                    {"dimension": x.dimension, "value": x.value, "frequency": x.frequency,
                     "peer_frequency": x.peer_frequency}
                    for x in f.factors
                ],
                "peer_group": ({"policies": f.peers.group, "members": f.peers.members,
                                "history_events": f.peers.history} if f.peers else None),
                "merged_firings": f.merged,
                "version": f.version,
            }
        },
    }
    if len(f.detectors) > 1:
        doc["finding_info"]["related_analytics"] = [analytic_of(f, d) for d in f.detectors[1:]]
    if f.closed_time is not None:
        doc["end_time"] = _epoch_ms(f.closed_time)
    if f.status_note:
        doc["comment"] = f.status_note
    return doc
