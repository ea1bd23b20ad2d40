"""Novelty: which values an identity (and its peers) has seen, and how often.

For each event secretscope asks, per *dimension* (the secret, its folder, the operation, the
network segment, the source address, the user-agent family, the auth method and the mount),
how often this identity has used that value before, as a frequency class in the manner of
GuardDuty's anomaly findings: frequent, infrequent, rare or unseen.

An unseen value means little for an identity that sees new values all the time (a human on a
VPN gets a new address every day) and a lot for one that never does (a service reading the same
three secrets), so novelty is also *normalized* by the identity's own rate of new values.

Peers are identities holding the same policies (the same role): a value unseen by an identity
*and* by its peers is stronger evidence than one only the identity has not used, and a new
identity is compared with its peers from its first event.
"""

from __future__ import annotations

from secretscope._native import PeerGroup  # noqa: F401  (what a peer group keeps: see there)
from secretscope.events import AccessEvent

DIMENSIONS: tuple[str, ...] = ("secret", "folder", "operation", "segment", "ip", "user_agent",
                               "auth_method", "mount")
SECRET, FOLDER, OPERATION, SEGMENT, IP, USER_AGENT, AUTH_METHOD, MOUNT = range(len(DIMENSIONS))
# Dimensions compared with the peer group: the ones a role shares (addresses are per host).
PEER_DIMENSIONS: tuple[int, ...] = (SECRET, FOLDER, SEGMENT, USER_AGENT)  # features.derive
# unpacks these four by position on its hot path: keep them in sync

FREQUENT, INFREQUENT, RARE, UNSEEN = 0, 1, 2, 3
FREQUENCY_CLASSES = ("frequent", "infrequent", "rare", "unseen")
RARE_SHARE = 0.01  # below 1% of the identity's history: rare
INFREQUENT_SHARE = 0.10  # below 10%: infrequent

_BROWSERS = (("Edg/", "edge"), ("Firefox/", "firefox"), ("Chrome/", "chrome"),
             ("Safari/", "safari"))
_FAMILY_CACHE: dict[str, str] = {}
_FAMILY_CACHE_MAX = 10_000  # user agents are attacker-controlled: bound the cache


def frequency_class(count: int, total: int) -> int:
    if not count:
        return UNSEEN
    share = count / total
    if share < RARE_SHARE:
        return RARE
    return INFREQUENT if share < INFREQUENT_SHARE else FREQUENT


def own_classes(tkeys: tuple, seen: dict, distinct, total: int) -> tuple[list[int], float]:
    """``frequency_classes`` against one identity's counts: ``tkeys`` are tagged keys (see
    :func:`tagged`) in one dict ``seen``, ``distinct`` the number of values per dimension."""
    if not total:
        return [FREQUENT if k is None else UNSEEN for k in tkeys], 1.0
    rare, infrequent = RARE_SHARE * total, INFREQUENT_SHARE * total
    classes: list[int] = []
    append = classes.append
    novelty = 0.0
    get = seen.get
    for d, key in enumerate(tkeys):
        n = get(key, 0) if key is not None else total
        if n >= infrequent:
            append(FREQUENT)
        elif n:
            append(INFREQUENT if n >= rare else RARE)
        else:
            append(UNSEEN)
            surprise = 1.0 - distinct[d] / total
            if surprise > novelty:
                novelty = surprise
    return classes, novelty


# Two more kinds of value an identity's baseline counts beside the dimensions: the networks it
# called from alone (features.network_of) and the environments of the secrets it read.
PLACE, ENVIRONMENT = len(DIMENSIONS), len(DIMENSIONS) + 1
COUNTED = len(DIMENSIONS) + 2
# Per dimension, value -> the value tagged with its dimension, so the counts of all dimensions
# of an identity share one dict (a secret and a folder may be the same string). Cached, so a
# value's tagged form is built once and shared by every identity that counts it.
_TAGS = tuple(chr(0x10 + d) for d in range(COUNTED))
_TAGGED: tuple[dict[str, str], ...] = tuple({} for _ in range(COUNTED))
_TAGGED_MAX = 20_000  # per dimension; values are attacker-controlled


def tagged(d: int, value: str | None) -> str | None:
    if value is None:
        return None
    cache = _TAGGED[d]
    key = cache.get(value)
    if key is None:
        key = _TAGS[d] + value
        if len(cache) >= _TAGGED_MAX:
            cache.clear()
        cache[value] = key
    return key


def tagged_keys(keys: tuple) -> tuple:
    """:func:`tagged` over the keys of every dimension (``dimension_keys``)."""
    return tuple(tagged(d, k) for d, k in enumerate(keys))


def untag(key: str) -> tuple[int, str]:
    return ord(key[0]) - 0x10, key[1:]


def agent_family(user_agent: str) -> str:
    """The product of a user agent without its version: ``vault-agent/1.19.2`` -> ``vault-agent``,
    browsers by engine brand, so an upgrade is not a new agent."""
    family = _FAMILY_CACHE.get(user_agent)
    if family is None:
        if user_agent.startswith("Mozilla/"):
            family = next((name for marker, name in _BROWSERS if marker in user_agent), "browser")
        else:
            family = user_agent.split("/", 1)[0].split(" ", 1)[0].lower() or "unknown"
        if len(_FAMILY_CACHE) < _FAMILY_CACHE_MAX:
            _FAMILY_CACHE[user_agent] = family
    return family


def dimension_keys(event: AccessEvent, segment: str, secret_access: bool) -> tuple:
    """The value of each dimension for ``event``; None where a dimension does not apply."""
    secret = event.secret if secret_access else None
    folder = secret.rpartition("/")[0] if secret else None
    ns = event.namespace
    return (secret, folder, event.operation, segment, event.remote_address or None,
            agent_family(event.user_agent) if event.user_agent else None,
            event.auth_method or None,
            f"{ns}/{event.mount_type}" if ns else event.mount_type)


def peer_key(policies: tuple[str, ...]) -> str:
    """Identities with the same policies (``default`` aside) are peers."""
    return ",".join(sorted(p for p in policies if p != "default")) or "default"

# A peer group (the identities of one `peer_key`) is `secretscope._native.PeerGroup`, compiled:
# it counts its members' learned secrets, folders, segments and user agents, hours of the day
# and policy writes, and its `derive` gives the peer part of an event's features.
