"""HashiCorp Vault / OpenBao audit log (file, socket or syslog device).

Vault writes two entries per call, ``type: request`` then ``type: response``, joined by
``request.id``. :func:`parse_entry` turns one line into a :class:`VaultEntry` (identifiers only);
:class:`VaultJoiner` joins the two halves into one :class:`~secretscope.events.AccessEvent`, works
with request-only and response-only feeds, and drops the copies that several audit devices
write of the same call. ``VaultJoiner.feed_line`` does both for one line in one call.

Both are compiled (``pipeline/native/src/vault.rs``): a call costs two lines of several
kilobytes, and decoding and joining them in Python cost as much as all the features together.
The compiled decoder takes a line only where it reads it exactly as the msgspec decoder here
does; any other line (a prefix it does not know, escapes it cannot borrow, a time in another
ISO 8601 form, anything malformed) is decoded here, which also words every error. Naming (what a
path names, who a token is, error text, a failed login's account) stays in the functions below,
called once per distinct input.

Only identifiers and metadata are read. ``request.data`` and ``response.data`` (which hold
secret values when a device runs with ``log_raw``) are never touched.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

import msgspec

from secretscope._native import VaultJoiner  # noqa: F401  (this format's joiner)
from secretscope._native import VaultEntry, decode_vault, set_vault_hooks
from secretscope.errors import ParseError
from secretscope.events import DENIED, FAILED, SUCCESS, AccessEvent
from secretscope.parsers.limits import InputLimits

SOURCE = "vault"
_UTC = timezone.utc
# KV v2 puts an API verb between the mount and the key; the secret is the same either way.
_KV2_VERBS = frozenset({"data", "metadata", "delete", "undelete", "destroy", "subkeys"})
LOGIN_NO_TOKEN = "login issued no token"  # error of a refused login logged without one
UNKNOWN_ADDRESS = "unknown"  # names an address-less caller: "anonymous:unknown"


class _Namespace(msgspec.Struct, gc=False):
    path: str | None = None


class _Headers(msgspec.Struct, gc=False):
    """Only the user agent: other headers (and their values) are never built as objects."""

    user_agent: list[str] | str | None = msgspec.field(default=None, name="user-agent")


class _Request(msgspec.Struct, gc=False):
    id: str | None = None
    operation: str | None = None
    path: str | None = None
    mount_point: str | None = None
    mount_type: str | None = None
    remote_address: str | None = None
    namespace: _Namespace | None = None
    headers: _Headers | None = None


class _Metadata(msgspec.Struct, frozen=True, gc=False):
    """What the auth method says the caller is. Only these names are decoded: token metadata
    can be set freely at ``auth/token/create``, so the rest is never materialized."""

    role_name: str | None = None  # AppRole
    service_account_namespace: str | None = None  # Kubernetes
    service_account_name: str | None = None


class _Auth(msgspec.Struct, frozen=True, gc=False):
    entity_id: str | None = None
    accessor: str | None = None
    display_name: str | None = None
    token_type: str | None = None
    policies: tuple[str, ...] | None = None
    metadata: _Metadata | None = None


class _Response(msgspec.Struct, gc=False):
    auth: _Auth | None = None  # a login's new token; nothing else of the response is decoded


class _Line(msgspec.Struct, gc=False):
    """The fields secretscope reads. The decoder skips everything else without building Python
    objects for it, so request/response ``data`` (secret values under ``log_raw``) is never
    materialized, and a wrong type in a field we use fails with its JSON path."""

    time: str
    type: str
    request: _Request
    auth: _Auth | None = None
    response: _Response | None = None
    error: str | None = None


_DECODER = msgspec.json.Decoder(_Line)
_FIRST_TS = datetime(1, 1, 1, tzinfo=_UTC).timestamp()
_LAST_TS = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=_UTC).timestamp()
_FIELD_AT = re.compile(r" - at `\$\.?([^`]*)`")


def looks_like(record: object) -> bool:
    """True if a decoded JSON record is a Vault audit entry (used by format detection)."""
    return (
        isinstance(record, dict)
        and record.get("type") in ("request", "response")
        and isinstance(record.get("request"), dict)
    )


def parse_entry(raw: bytes, origin: str, limits: InputLimits = InputLimits(),
                lineno: int = 0) -> VaultEntry:
    """Parse one audit line. Text before the first ``{`` is the device's ``prefix`` option.

    ``origin`` names where the line came from; with ``lineno`` it is a file name and the line's
    origin is ``origin:lineno``."""
    if len(raw) > limits.max_record_bytes:
        raise ParseError("oversize", f"{len(raw)} bytes > {limits.max_record_bytes}",
                         _where(origin, lineno))
    entry = decode_vault(raw, origin, lineno)
    return entry if entry is not None else _parse_in_python(raw, origin, lineno)


def _parse_in_python(raw: bytes, origin: str, lineno: int) -> VaultEntry:
    """A line the compiled decoder declined: an entry, or the error that says what is wrong."""
    try:
        line = _DECODER.decode(raw if raw[:1] == b"{" else raw[raw.index(b"{"):])
    except ValueError as exc:  # no "{" at all, or msgspec's errors (ValueError subclasses)
        raise _decode_error(exc, _where(origin, lineno)) from None
    except RecursionError:
        # Only fixed-depth fields are built as objects; anything nested deeper than the
        # decoder's guard (about 1,000 levels) is rejected instead of skipped.
        raise ParseError("too_deep", "JSON nested too deeply", _where(origin, lineno)) from None
    kind = line.type
    if kind != "request" and kind != "response":
        raise ParseError("not_vault", f"type is {kind[:40]!r}, expected request or response",
                         _where(origin, lineno), "type")
    ts = _timestamp(line.time, origin, lineno)
    req = line.request
    ns = req.namespace
    request = (req.path, req.mount_point, req.mount_type, ns.path if ns is not None else None,
               req.id, req.operation, req.remote_address, _agent(req))
    response = line.response
    return VaultEntry(kind, ts, request, _auth_fields(line.auth), response is not None,
                      _auth_fields(response.auth if response is not None else None), line.error,
                      origin, lineno)


def _auth_fields(auth: _Auth | None) -> tuple | None:
    if auth is None:
        return None
    meta = auth.metadata or _NO_METADATA
    return (auth.entity_id, auth.accessor, auth.display_name, auth.token_type,
            list(auth.policies) if auth.policies is not None else None, meta.role_name,
            meta.service_account_namespace, meta.service_account_name)


def _where(origin: str, lineno: int) -> str:
    return f"{origin}:{lineno}" if lineno else origin


def _decode_error(exc: ValueError, origin: str) -> ParseError:
    if isinstance(exc, msgspec.ValidationError):
        return _validation_error(str(exc), origin)
    if isinstance(exc, msgspec.DecodeError):
        return ParseError("not_json", str(exc), origin)
    return ParseError("not_json", "no JSON object on the line", origin)


def _validation_error(message: str, origin: str) -> ParseError:
    match = _FIELD_AT.search(message)
    field = match.group(1) if match else ""
    detail = message[: match.start()] if match else message
    if detail.startswith("Object missing required field"):
        return ParseError("missing_field", detail, origin, detail.split("`")[1] if "`" in detail else field)
    if detail.startswith("Expected `object`, got `"):
        reason = "not_object" if not field else "wrong_type"
        return ParseError(reason, detail, origin, field)
    return ParseError("wrong_type", detail, origin, field)


def _timestamp(value: str, origin: str, lineno: int = 0) -> float:
    """RFC 3339 time -> POSIX seconds. Python 3.11's parser accepts 'Z', UTC offsets and 0-9
    fractional digits (truncated to microseconds); a time without a zone is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ParseError("bad_time", f"not RFC 3339: {value[:40]!r}", _where(origin, lineno),
                         "time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_UTC)
    ts = parsed.timestamp()
    if not _FIRST_TS <= ts <= _LAST_TS:
        # an offset can push a valid local time out of years 1-9999 in UTC, where every later
        # datetime.fromtimestamp (windows, findings) would overflow: refuse it here, at parse
        raise ParseError("bad_time", f"outside years 1-9999 once converted to UTC: {value[:40]!r}",
                         _where(origin, lineno), "time")
    return ts


def _address(value: str) -> str:
    """IPv6 remote addresses come bracketed (``[2001:db8::10]``); strip brackets and port."""
    address = _ADDRESSES.get(value)
    if address is None:
        if len(_ADDRESSES) >= _MAX_CACHED:
            _ADDRESSES.clear()
        address = _ADDRESSES[value] = _bare_address(value)
    return address


_ADDRESSES: dict[str, str] = {}  # as logged -> bare; callers repeat, so this runs once per caller
_MAX_CACHED = 1 << 14  # entries per cache: a few MB at most


def _bare_address(value: str) -> str:
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value[1:]
    if value.count(":") == 1:  # IPv4 with a port
        return value.split(":", 1)[0]
    return value


def _agent(request: _Request) -> str:
    """The user agent header's value (the first, when it is a list); the event keeps 256
    characters of it."""
    headers = request.headers
    if headers is None:
        return ""
    value = headers.user_agent
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


def _error(error: str) -> str:
    """Vault's only outcome signal; multierror text is reduced to its first item."""
    star = error.find("* ")
    text = error[star + 2:].split("\n", 1)[0] if star >= 0 else error.strip()
    return text[:200]


# ---------------------------------------------------------------------------------------------
# Naming: called by the compiled joiner once per distinct path, token, address and error


def _token(entity_id: str | None, accessor: str | None, display_name: str | None,
           token_type: str | None, policies: tuple[str, ...] | None, role_name: str | None,
           service_account_namespace: str | None, service_account_name: str | None
           ) -> tuple[str, str, tuple[str, ...], str]:
    """(identity, display name, policies, token type) of a token's auth block, all None for a
    call without one."""
    auth = _Auth(entity_id, accessor, display_name, token_type, policies,
                 _Metadata(role_name, service_account_namespace, service_account_name))
    identity, display = _named(auth)
    return identity, display, policies or (), token_type or ""


def _named(auth: _Auth) -> tuple[str, str]:
    """(identity, display name) of a token: the role or service account its auth method
    vouches for, then entity, accessor, display name; ("", "") for no token."""
    display = auth.display_name or ""
    meta = auth.metadata
    # Metadata of tokens made with auth/token/create (display "token-...") is whatever their
    # creator wrote, so it names nobody.
    if meta is not None and display != "token" and not display.startswith("token-"):
        if meta.role_name:
            if not display.endswith(meta.role_name):
                display = f"{display}-{meta.role_name}" if display else meta.role_name
            return f"approle:{meta.role_name}", display
        if meta.service_account_namespace and meta.service_account_name:
            return (f"kubernetes:{meta.service_account_namespace}/{meta.service_account_name}",
                    display)
    if auth.entity_id:
        return f"entity:{auth.entity_id}", display
    if auth.accessor:
        return f"accessor:{auth.accessor}", display
    if display:
        return f"name:{display}", display
    return "", ""


def _login_attempt(path: str, remote_address: str) -> tuple[str, str, tuple[str, ...], str]:
    """A failed or request-only login: key on the account being tried, not on the caller."""
    parts = path.split("/")
    tail = path.split("/login", 1)
    who = tail[1].strip("/") if len(tail) > 1 and tail[1].strip("/") else ""
    who = who or f"@{_address(remote_address) or UNKNOWN_ADDRESS}"
    return f"login:{parts[1] if len(parts) > 1 else ''}/{who}", who, (), ""


def _is_login(path: str) -> bool:
    if not path.startswith("auth/"):
        return False
    rest = path[5:]
    slash = rest.find("/")
    tail = rest[slash + 1:] if slash >= 0 else ""
    return tail == "login" or tail.startswith("login/") or tail.endswith("/callback")


def _resource(where: tuple[str, str | None, str | None, str | None]) -> tuple[bool, str, str]:
    """(is a login, secret name, namespace) of (path, mount point, mount type, namespace
    path)."""
    path, mount_point, mount_type, ns_path = where
    namespace = (ns_path or "").strip("/")
    return (path[:5] == "auth/" and _is_login(path),
            _secret_name(mount_point or "", mount_type or "", path, namespace), namespace)


def _secret_name(mount: str, mount_type: str, path: str, ns: str) -> str:
    """namespace/mount/key, without the KV v2 verb: ``secret/data/a/b`` -> ``secret/a/b``."""
    if not mount or not path.startswith(mount):
        slash = path.find("/")
        mount = path[: slash + 1] if slash >= 0 else path
    rest = path[len(mount):]
    if mount_type in ("kv", "kv-v2", "") and rest:
        verb, _, key = rest.partition("/")
        if verb in _KV2_VERBS and (mount_type or key):
            rest = key
    name = mount + rest
    return f"{ns}/{name}" if ns else name


def _derived_id(kind: str, ts: float, operation: str, path: str, accessor: str,
                remote_address: str) -> str:
    """Stable id for entries Vault logged without one (help requests, very old versions)."""
    key = "\x1f".join((kind, repr(ts), operation, path, accessor, remote_address))
    return "derived:" + hashlib.sha256(key.encode()).hexdigest()[:32]


# Fields of an event cut to ``max_field_chars``, named in its ``truncated``.
_FIELDS = ("event_id", "identity", "display_name", "operation", "path", "secret", "namespace",
           "mount_type", "remote_address")


def _truncate(values: tuple[str, ...], max_chars: int, policies_cut: bool
              ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The event's fields cut to ``max_chars``, and the names of those cut."""
    truncated = tuple(n for n, v in zip(_FIELDS, values) if len(v) > max_chars)
    if policies_cut:
        truncated += ("policies",)
    return tuple(v[:max_chars] for v in values), truncated


def _cut_policies(policies: tuple[str, ...], max_chars: int) -> tuple[str, ...]:
    """At most 64 policies of at most ``max_chars`` each."""
    return tuple(p[:max_chars] for p in policies[:64])


_NO_METADATA = _Metadata()

set_vault_hooks(AccessEvent, _resource, _token, _error, _login_attempt, _derived_id,
                _bare_address, _truncate, _cut_policies,
                [SOURCE, SUCCESS, DENIED, FAILED, LOGIN_NO_TOKEN, "request+response", "request",
                 "response", "", "token"])
