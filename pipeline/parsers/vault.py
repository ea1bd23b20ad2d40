"""HashiCorp Vault / OpenBao audit log (file, socket or syslog device).

Vault writes two entries per call, ``type: request`` then ``type: response``, joined by
``request.id``. :func:`parse_entry` turns one line into a :class:`VaultEntry` (identifiers only);
:class:`VaultJoiner` joins the two halves into one :class:`~pipeline.events.AccessEvent`, works
with request-only and response-only feeds, and drops the copies that several audit devices
write of the same call.

Only identifiers and metadata are read. ``request.data`` and ``response.data`` (which hold
secret values when a device runs with ``log_raw``) are never touched.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from datetime import datetime, timezone

import orjson

from pipeline.errors import ParseError
from pipeline.events import DENIED, FAILED, SUCCESS, AccessEvent
from pipeline.parsers.limits import InputLimits, check_depth

SOURCE = "vault"
_UTC = timezone.utc
# KV v2 puts an API verb between the mount and the key; the secret is the same either way.
_KV2_VERBS = frozenset({"data", "metadata", "delete", "undelete", "destroy", "subkeys"})
_KNOWN_METHODS = frozenset(
    {"approle", "kubernetes", "oidc", "jwt", "userpass", "ldap", "okta", "github", "aws", "gcp",
     "azure", "cert", "radius", "token", "root"}
)


class VaultEntry:
    """One audit entry (request or response half), reduced to the fields secretscope uses."""

    __slots__ = (
        "kind", "ts", "time", "request_id", "entity_id", "accessor", "display_name", "policies",
        "token_type", "operation", "path", "mount_point", "mount_type", "namespace",
        "remote_address", "user_agent", "error", "origin", "truncated", "login_identity",
    )

    def __init__(self) -> None:
        self.truncated: tuple[str, ...] = ()
        self.login_identity: tuple[str, str, str, tuple[str, ...]] | None = None


def looks_like(record: object) -> bool:
    """True if a decoded JSON record is a Vault audit entry (used by format detection)."""
    return (
        isinstance(record, dict)
        and record.get("type") in ("request", "response")
        and isinstance(record.get("request"), dict)
    )


def parse_entry(raw: bytes, origin: str, limits: InputLimits = InputLimits()) -> VaultEntry:
    """Parse one audit line. Text before the first ``{`` is the device's ``prefix`` option."""
    if len(raw) > limits.max_record_bytes:
        raise ParseError("oversize", f"{len(raw)} bytes > {limits.max_record_bytes}", origin)
    start = raw.find(b"{")
    if start < 0:
        raise ParseError("not_json", "no JSON object on the line", origin)
    body = raw[start:] if start else raw
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError("not_json", str(exc).split(":", 1)[0], origin) from None
    if body.count(b"{") + body.count(b"[") > limits.max_depth:
        depth = check_depth(body, limits.max_depth)
        if depth:
            raise ParseError("too_deep", f"nesting depth > {limits.max_depth}", origin)
    if not isinstance(record, dict):
        raise ParseError("not_object", f"top level is {type(record).__name__}", origin)
    return _entry_from_record(record, origin, limits)


def _entry_from_record(record: dict, origin: str, limits: InputLimits) -> VaultEntry:
    kind = record.get("type")
    if kind not in ("request", "response"):
        raise ParseError("not_vault", f"type is {kind!r}, expected request or response", origin, "type")
    request = _obj(record, "request", origin, required=True)
    auth = _obj(record, "auth", origin)
    e = VaultEntry()
    e.kind = kind
    e.origin = origin
    e.time, e.ts = _time(record.get("time"), origin)
    cut: list[str] = []
    e.request_id = _str(request, "id", "request.id", origin, limits, cut)
    e.operation = _str(request, "operation", "request.operation", origin, limits, cut)
    e.path = _str(request, "path", "request.path", origin, limits, cut)
    e.mount_point = _str(request, "mount_point", "request.mount_point", origin, limits, cut)
    e.mount_type = _str(request, "mount_type", "request.mount_type", origin, limits, cut)
    e.remote_address = _address(_str(request, "remote_address", "request.remote_address", origin, limits, cut))
    e.namespace = _namespace(request, origin, limits, cut)
    e.user_agent = _user_agent(request, origin, limits, cut)
    e.entity_id = _str(auth, "entity_id", "auth.entity_id", origin, limits, cut)
    e.accessor = _str(auth, "accessor", "auth.accessor", origin, limits, cut)
    e.display_name = _str(auth, "display_name", "auth.display_name", origin, limits, cut)
    e.token_type = _str(auth, "token_type", "auth.token_type", origin, limits, cut)
    e.policies = _policies(auth, "auth.policies", origin)
    e.error = _error(record, origin, limits, cut)
    if kind == "response":
        e.login_identity = _login_identity(record, origin, limits, cut)
    e.truncated = tuple(cut)
    return e


def _obj(parent: dict, key: str, origin: str, required: bool = False) -> dict:
    value = parent.get(key)
    if value is None:
        if required:
            raise ParseError("missing_field", "required object absent", origin, key)
        return {}
    if not isinstance(value, dict):
        raise ParseError("wrong_type", f"expected object, got {type(value).__name__}", origin, key)
    return value


def _str(obj: dict, key: str, name: str, origin: str, limits: InputLimits, cut: list[str]) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParseError("wrong_type", f"expected string, got {type(value).__name__}", origin, name)
    if len(value) > limits.max_field_chars:
        cut.append(name)
        return value[: limits.max_field_chars]
    return value


def _time(value: object, origin: str) -> tuple[datetime, float]:
    if not isinstance(value, str) or not value:
        raise ParseError("missing_field", "no timestamp", origin, "time")
    try:
        # Python 3.11 accepts 'Z', offsets and 0-9 fractional digits (truncated to microseconds).
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ParseError("bad_time", f"not RFC 3339: {value[:40]!r}", origin, "time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_UTC)
    elif parsed.utcoffset():
        parsed = parsed.astimezone(_UTC)
    return parsed, parsed.timestamp()


def _address(value: str) -> str:
    """IPv6 remote addresses come bracketed (``[2001:db8::10]``); strip brackets and port."""
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value[1:]
    if value.count(":") == 1:  # IPv4 with a port
        return value.split(":", 1)[0]
    return value


def _namespace(request: dict, origin: str, limits: InputLimits, cut: list[str]) -> str:
    ns = request.get("namespace")
    if ns is None:
        return ""
    if not isinstance(ns, dict):
        raise ParseError("wrong_type", f"expected object, got {type(ns).__name__}", origin, "request.namespace")
    return _str(ns, "path", "request.namespace.path", origin, limits, cut).strip("/")


def _user_agent(request: dict, origin: str, limits: InputLimits, cut: list[str]) -> str:
    headers = request.get("headers")
    if not headers:
        return ""
    if not isinstance(headers, dict):
        raise ParseError("wrong_type", "expected object", origin, "request.headers")
    value = headers.get("user-agent")
    if isinstance(value, list):
        value = value[0] if value else ""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParseError("wrong_type", "expected string", origin, "request.headers.user-agent")
    if len(value) > 256:
        cut.append("request.headers.user-agent")
        return value[:256]
    return value


def _policies(auth: dict, name: str, origin: str) -> tuple[str, ...]:
    value = auth.get("policies")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ParseError("wrong_type", "expected a list of strings", origin, name)
    return tuple(value[:64])


def _error(record: dict, origin: str, limits: InputLimits, cut: list[str]) -> str:
    """Vault's only outcome signal; multierror text is reduced to its first item."""
    value = record.get("error")
    if not value:
        return ""
    if not isinstance(value, str):
        raise ParseError("wrong_type", "expected string", origin, "error")
    star = value.find("* ")
    text = value[star + 2:].split("\n", 1)[0] if star >= 0 else value.strip()
    if len(text) > 200:
        cut.append("error")
        text = text[:200]
    return text


def _login_identity(record: dict, origin: str, limits: InputLimits, cut: list[str]):
    """A login response names the new token's identity in ``response.auth``."""
    response = _obj(record, "response", origin)
    auth = _obj(response, "auth", origin) if response else {}
    if not auth:
        return None
    return (
        _str(auth, "entity_id", "response.auth.entity_id", origin, limits, cut),
        _str(auth, "accessor", "response.auth.accessor", origin, limits, cut),
        _str(auth, "display_name", "response.auth.display_name", origin, limits, cut),
        _policies(auth, "response.auth.policies", origin),
    )


# ---------------------------------------------------------------------------------------------
# Joining the two halves of a call


class _Call:
    __slots__ = ("request", "response", "done", "first_ts")

    def __init__(self, first_ts: float) -> None:
        self.request: VaultEntry | None = None
        self.response: VaultEntry | None = None
        self.done = False
        self.first_ts = first_ts


class VaultJoiner:
    """Joins request and response entries into events, in the order the calls arrived.

    A call is released when its response arrives, or ``join_timeout`` seconds of event time after
    its request if no response comes (request-only devices). Calls are released in arrival order
    so the stream stays in event-time order. Entries whose request id was released recently are
    copies from another audit device and are dropped (``duplicates`` counts them).
    """

    def __init__(self, join_timeout: float = 30.0, max_pending: int = 100_000,
                 remember: int = 200_000) -> None:
        self.join_timeout = join_timeout
        self.max_pending = max_pending
        self.remember = remember
        self.duplicates = 0
        self._pending: OrderedDict[str, _Call] = OrderedDict()
        self._released: OrderedDict[str, None] = OrderedDict()
        self._anonymous = 0

    def feed(self, entry: VaultEntry) -> list[AccessEvent]:
        key = entry.request_id
        if not key:
            # No id to join on (e.g. help requests): the entry is a call of its own.
            self._anonymous += 1
            key = f"\x00{self._anonymous}"
        elif key in self._released:
            self.duplicates += 1
            return self._expire(entry.ts)
        call = self._pending.get(key)
        if call is None:
            call = self._pending[key] = _Call(entry.ts)
        if entry.kind == "request":
            if call.request is not None:
                self.duplicates += 1
            else:
                call.request = entry
            call.done = call.response is not None or not entry.request_id
        else:
            if call.response is not None:
                self.duplicates += 1
            else:
                call.response = entry
            call.done = True
        return self._expire(entry.ts)

    def flush(self) -> list[AccessEvent]:
        """Release every pending call (end of input)."""
        out = [self._release(k, c) for k, c in self._pending.items()]
        self._pending.clear()
        return out

    def _expire(self, now: float) -> list[AccessEvent]:
        out: list[AccessEvent] = []
        pending = self._pending
        deadline = now - self.join_timeout
        while pending:
            key, call = next(iter(pending.items()))
            if not (call.done or call.first_ts < deadline or len(pending) > self.max_pending):
                break
            del pending[key]
            out.append(self._release(key, call))
        return out

    def _release(self, key: str, call: _Call) -> AccessEvent:
        if not key.startswith("\x00"):
            released = self._released
            released[key] = None
            if len(released) > self.remember:
                released.popitem(last=False)
        return build_event(call.request, call.response)


def build_event(request: VaultEntry | None, response: VaultEntry | None) -> AccessEvent:
    """Merge the halves of one call; either may be missing."""
    first = request or response
    assert first is not None
    last = response or request
    phases = "request+response" if request and response else first.kind
    identity, display, policies = _identity(first, response)
    event_id = first.request_id or _derived_id(first)
    is_login = _is_login(first.path)
    return AccessEvent(
        source=SOURCE,
        event_id=event_id,
        time=first.time,
        ts=first.ts,
        identity=identity,
        display_name=display,
        policies=policies,
        operation=first.operation,
        path=first.path,
        secret=_secret_name(first),
        namespace=first.namespace,
        mount_type=first.mount_type,
        remote_address=first.remote_address,
        user_agent=first.user_agent,
        outcome=_outcome(last.error),
        error=last.error,
        is_login=is_login,
        auth_method=_auth_method(first, display, is_login),
        token_type=first.token_type,
        phases=phases,
        origin=first.origin,
        truncated=first.truncated + (response.truncated if response and request else ()),
    )


def _identity(first: VaultEntry, response: VaultEntry | None) -> tuple[str, str, tuple[str, ...]]:
    """entity_id, then token accessor, then display name; login responses carry the new identity."""
    if response is not None and response.login_identity is not None:
        entity_id, accessor, display, policies = response.login_identity
    else:
        entity_id, accessor, display, policies = (
            first.entity_id, first.accessor, first.display_name, first.policies)
    if entity_id:
        return f"entity:{entity_id}", display, policies
    if accessor:
        return f"accessor:{accessor}", display, policies
    if display:
        return f"name:{display}", display, policies
    if _is_login(first.path):
        # A failed or request-only login: key on the account being tried, not on the caller.
        target = first.path.split("/login", 1)
        parts = first.path.split("/")
        who = target[1].strip("/") if len(target) > 1 and target[1].strip("/") else f"@{first.remote_address}"
        return f"login:{parts[1] if len(parts) > 1 else ''}/{who}", who, ()
    return f"anonymous:{first.remote_address}", "", ()


def _is_login(path: str) -> bool:
    if not path.startswith("auth/"):
        return False
    rest = path[5:]
    slash = rest.find("/")
    tail = rest[slash + 1:] if slash >= 0 else ""
    return tail == "login" or tail.startswith("login/") or tail.endswith("/callback")


def _auth_method(first: VaultEntry, display: str, is_login: bool) -> str:
    if is_login:
        return first.mount_type or first.path.split("/")[1]
    head = display.split("-", 1)[0]
    return head if head in _KNOWN_METHODS else "token"


def _secret_name(e: VaultEntry) -> str:
    """namespace/mount/key, without the KV v2 verb: ``secret/data/a/b`` -> ``secret/a/b``."""
    path = e.path
    mount = e.mount_point
    if not mount or not path.startswith(mount):
        slash = path.find("/")
        mount = path[: slash + 1] if slash >= 0 else path
    rest = path[len(mount):]
    if e.mount_type in ("kv", "kv-v2", "") and rest:
        verb, _, key = rest.partition("/")
        if verb in _KV2_VERBS and (e.mount_type or key):
            rest = key
    name = mount + rest
    return f"{e.namespace}/{name}" if e.namespace else name


def _outcome(error: str) -> str:
    if not error:
        return SUCCESS
    if "permission denied" in error:
        return DENIED
    return FAILED


def _derived_id(e: VaultEntry) -> str:
    """Stable id for entries Vault logged without one (help requests, very old versions)."""
    key = "\x1f".join((e.kind, repr(e.ts), e.operation, e.path, e.accessor, e.remote_address))
    return "derived:" + hashlib.sha256(key.encode()).hexdigest()[:32]
