"""The Python Vault decoder and joiner that ``secretscope._native`` replaced: the reference
``tests/test_native_vault.py`` checks the compiled ones against (events, dead letters and
counters alike). Its entry, joiner, event building and cached naming are kept as they were in
``pipeline/parsers/vault.py``; what the package still has in Python (the msgspec decoder and its
errors, times, addresses, who a token is, what a path names) is imported from there.

HashiCorp Vault / OpenBao audit log (file, socket or syslog device).

Vault writes two entries per call, ``type: request`` then ``type: response``, joined by
``request.id``. :func:`parse_entry` turns one line into a :class:`VaultEntry` (identifiers only);
:class:`VaultJoiner` joins the two halves into one :class:`~secretscope.events.AccessEvent`, works
with request-only and response-only feeds, and drops the copies that several audit devices
write of the same call.

Only identifiers and metadata are read. ``request.data`` and ``response.data`` (which hold
secret values when a device runs with ``log_raw``) are never touched.
"""

from __future__ import annotations

import hashlib
from collections import deque

import msgspec

from secretscope.errors import ParseError
from secretscope.events import DENIED, FAILED, SUCCESS, AccessEvent
from secretscope.parsers.limits import InputLimits
# What the package still has in Python is shared, not copied: the msgspec decoder and its
# errors, times, addresses and naming (the Python fallback and the compiled joiner use them).
from secretscope.parsers.vault import (LOGIN_NO_TOKEN, SOURCE, UNKNOWN_ADDRESS, _DECODER, _FIELDS,
                                        _Auth, _Line, _Request, _address, _decode_error,
                                        _is_login, _named, _secret_name, _timestamp, _where)

_KNOWN_METHODS = frozenset(
    {"approle", "kubernetes", "oidc", "jwt", "userpass", "ldap", "okta", "github", "aws", "gcp",
     "azure", "cert", "radius", "token", "root"}
)


class VaultEntry(msgspec.Struct, gc=False):
    """One audit entry (request or response half) with its event time and origin.

    A file source passes its name and the line number apart (``where``, ``lineno``): the
    ``file:line`` text is only built for the entry that names an event or an error. A struct
    rather than a class with ``__init__``: two are built per call on the hot path."""

    kind: str  # "request" or "response"
    ts: float
    request_id: str
    line: _Line
    where: str
    lineno: int = 0

    @property
    def origin(self) -> str:
        return f"{self.where}:{self.lineno}" if self.lineno else self.where


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
    return VaultEntry(kind, _timestamp(line.time, origin, lineno), line.request.id or "", line,
                      origin, lineno)




def _user_agent(request: _Request) -> str:
    headers = request.headers
    if headers is None:
        return ""
    value = headers.user_agent
    if isinstance(value, list):
        value = value[0] if value else ""
    return value[:256] if isinstance(value, str) else ""


def _error(error: str | None) -> str:
    """Vault's only outcome signal; multierror text is reduced to its first item."""
    if not error:
        return ""
    star = error.find("* ")
    text = error[star + 2:].split("\n", 1)[0] if star >= 0 else error.strip()
    return text[:200]


# ---------------------------------------------------------------------------------------------
# Joining the two halves of a call


class _Call:
    __slots__ = ("key", "request", "response", "done", "first_ts")

    def __init__(self, key: str, first_ts: float) -> None:
        self.key = key
        self.request: VaultEntry | None = None
        self.response: VaultEntry | None = None
        self.done = False
        self.first_ts = first_ts


# How long (event time) a released request id is remembered to drop copies of its entries that
# other audit devices wrote. Devices write a call's entries at the same moment, so copies are
# apart only by how late their inputs deliver them, which the join already bounds at
# join_timeout (30 s by default) for the two halves of one call.
REMEMBER_SECONDS = 120.0
MIN_REMEMBERED = 4096  # ~0.5 MB of ids: a floor for streams whose event time jumps around


class VaultJoiner:
    """Joins request and response entries into events, in the order the calls arrived.

    A call is released when its response arrives, or ``join_timeout`` seconds of event time after
    its request if no response comes (request-only devices). Calls are released in arrival order
    so the stream stays in event-time order. Entries whose request id was released recently are
    copies from another audit device and are dropped (``duplicates`` counts them), and so is the
    self-test entry an audit device writes when it is set up (``self_tests`` counts them).

    "Recently" is event time: a released id is remembered for at least ``remember_seconds`` and
    forgotten about twice that after its release (two generations of ids, the older dropped as
    a whole), so memory follows the call rate over that span, never the stream's length. A
    generation also spans at least ``min_remembered`` ids: where event time is out of order
    (two devices' copies of a log whose lines are hours apart), the last few thousand ids are
    still remembered.
    """

    def __init__(self, join_timeout: float = 30.0, max_field_chars: int = 1024,
                 max_pending: int = 100_000, remember_seconds: float = REMEMBER_SECONDS,
                 min_remembered: int = MIN_REMEMBERED) -> None:
        self.join_timeout = join_timeout
        self.max_field_chars = max_field_chars
        self.max_pending = max_pending
        self.remember_seconds = remember_seconds
        self.min_remembered = min_remembered
        self.duplicates = 0
        self._pending: dict[str, _Call] = {}
        self._order: deque[_Call] = deque()  # pending calls in arrival order
        self._released: set[str] = set()  # ids released since _generation_start
        self._released_before: set[str] = set()  # ids released in the generation before
        self._generation_start = float("-inf")
        self._anonymous = 0
        self.self_tests = 0  # audit-device self-test entries dropped: not calls (_is_self_test)
        self.latest_ts = float("-inf")  # newest event time fed so far

    def oldest_pending(self) -> VaultEntry | None:
        """The earliest entry still waiting for its other half (it holds back commits and
        watermarks: its call has not been emitted yet)."""
        if self._order:
            call = self._order[0]
            return call.request or call.response
        return None

    def remembered(self) -> int:
        """How many released request ids are remembered for dropping copies."""
        return len(self._released) + len(self._released_before)

    def feed(self, entry: VaultEntry) -> list[AccessEvent]:
        ts = entry.ts
        if ts > self.latest_ts:
            self.latest_ts = ts
            if (ts - self._generation_start >= self.remember_seconds
                    and len(self._released) >= self.min_remembered):
                self._next_generation(ts)
        if entry.line.request.path == "sys/audit/test" and _is_self_test(entry):
            self.self_tests += 1
            return self._expire(ts)
        key = entry.request_id
        if not key:
            # No id to join on (e.g. help requests): the entry is a call of its own.
            self._anonymous += 1
            key = f"\x00{self._anonymous}"
        elif key in self._released or key in self._released_before:
            self.duplicates += 1
            return self._expire(ts)
        call = self._pending.get(key)
        if call is None:
            call = self._pending[key] = _Call(key, ts)
            self._order.append(call)
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
        return self._expire(ts)

    def release_oldest(self) -> list[AccessEvent]:
        """Release the oldest waiting call without its other half, then the completed calls
        that were queued behind it. Live sources call this when the wait has lasted too long in
        wall time; an entry of that call arriving later is then counted as a duplicate."""
        if not self._order:
            return []
        call = self._order.popleft()
        del self._pending[call.key]
        return [self._release(call), *self._expire(self.latest_ts)]

    def flush(self) -> list[AccessEvent]:
        """Release every pending call (end of input)."""
        out = [self._release(c) for c in self._order]
        self._order.clear()
        self._pending.clear()
        return out

    def _next_generation(self, now: float) -> None:
        self._released_before = self._released
        self._released = set()
        self._generation_start = now

    def _expire(self, now: float) -> list[AccessEvent]:
        out: list[AccessEvent] = []
        order = self._order
        deadline = now - self.join_timeout
        while order:
            call = order[0]
            if not (call.done or call.first_ts < deadline or len(order) > self.max_pending):
                break
            order.popleft()
            del self._pending[call.key]
            out.append(self._release(call))
        return out

    def _release(self, call: _Call) -> AccessEvent:
        if call.key[0] != "\x00":
            self._released.add(call.key)
        return build_event(call.request, call.response, self.max_field_chars)



def build_event(request: VaultEntry | None, response: VaultEntry | None,
                max_field_chars: int = 1024) -> AccessEvent:
    """Merge the halves of one call; either may be missing. Fields longer than
    ``max_field_chars`` are cut and named in ``truncated``."""
    first = request or response
    assert first is not None
    last = response or request
    req = first.line.request
    path = req.path or ""
    ns = req.namespace
    where = (path, req.mount_point, req.mount_type, ns.path if ns is not None else None)
    named = _RESOURCES.get(where)
    if named is None:
        named = _resource(where)
    is_login, secret, namespace = named
    identity, display, policies, token_type = _identity(first, response, is_login)
    error = _error(last.line.error)
    if is_login and not error and _no_token(response):
        # OpenBao logs some refused logins (an unknown userpass user) with the error only in
        # response.data, which is never read: a login that issued no token did not succeed.
        error = LOGIN_NO_TOKEN
    values = (
        first.request_id or _derived_id(first), identity, display, req.operation or "", path,
        secret, namespace, req.mount_type or "", _address(req.remote_address or ""),
    )
    truncated: tuple[str, ...] = ()
    if max(map(len, values)) > max_field_chars:
        truncated = tuple(n for n, v in zip(_FIELDS, values) if len(v) > max_field_chars)
        values = tuple(v[:max_field_chars] for v in values)
    if policies and (len(policies) > 64 or max(map(len, policies)) > max_field_chars):
        policies = tuple(p[:max_field_chars] for p in policies[:64])
        truncated += ("policies",)
    event_id, identity, display, operation, path, secret, namespace, mount_type, address = values
    return AccessEvent(
        SOURCE, event_id, first.ts, identity, display, policies, operation, path, secret,
        namespace, mount_type, address, _user_agent(req), _outcome(error), error, is_login,
        _auth_method(req, path, display, is_login), token_type,
        "request+response" if request and response else first.kind, first.origin, truncated,
    )


def _identity(first: VaultEntry, response: VaultEntry | None,
              is_login: bool) -> tuple[str, str, tuple[str, ...], str]:
    """Who made the call. A login takes the new token's identity (``response.auth``), or, when
    it failed, the account tried; every other call is the caller's, including calls that create
    tokens (``auth/token/create*``), whose ``response.auth`` is the new token, not the actor."""
    if is_login:
        resp = response.line.response if response is not None else None
        auth = resp.auth if resp is not None else None
        if auth is None:
            return _login_attempt(first.line.request)
    else:
        auth = first.line.auth
        if auth is None and response is not None:
            auth = response.line.auth
        if auth is None:
            auth = _NO_AUTH
    named = _TOKENS.get(auth)
    if named is None:
        named = _token(auth)
    if named[0]:
        return named
    return f"anonymous:{_known_address(first.line.request)}", "", (), named[3]


# auth block -> _token(auth): a token's block repeats on every call it makes, so its naming runs
# once per token (and its strings are shared by its events). Bounded: cleared when full.
_TOKENS: dict[_Auth, tuple[str, str, tuple[str, ...], str]] = {}
_MAX_CACHED = 1 << 14  # entries per cache: a few MB at most


def _token(auth: _Auth) -> tuple[str, str, tuple[str, ...], str]:
    """(identity, display name, policies, token type) of a token, cached in _TOKENS."""
    identity, display = _named(auth)
    if len(_TOKENS) >= _MAX_CACHED:
        _TOKENS.clear()
    named = _TOKENS[auth] = (identity, display, auth.policies or (), auth.token_type or "")
    return named


def _no_token(response: VaultEntry | None) -> bool:
    resp = response.line.response if response is not None else None
    return response is not None and (resp is None or resp.auth is None)


def _login_attempt(req: _Request) -> tuple[str, str, tuple[str, ...], str]:
    """A failed or request-only login: key on the account being tried, not on the caller."""
    path = req.path or ""
    parts = path.split("/")
    tail = path.split("/login", 1)
    who = tail[1].strip("/") if len(tail) > 1 and tail[1].strip("/") else ""
    who = who or f"@{_known_address(req)}"
    return f"login:{parts[1] if len(parts) > 1 else ''}/{who}", who, (), ""


def _known_address(req: _Request) -> str:
    """The caller's address for naming, ``unknown`` when the line has none (never a bare
    ``anonymous:``)."""
    return _address(req.remote_address or "") or UNKNOWN_ADDRESS


def _is_self_test(entry: VaultEntry) -> bool:
    """The entry an audit device writes of itself when it is set up (at server start-up for
    OpenBao's declarative devices): ``update sys/audit/test`` with no token and no address.
    No client sent it, and a client's request always has an address."""
    line = entry.line
    req = line.request
    auth = line.auth
    return (req.path == "sys/audit/test" and not req.remote_address
            and (auth is None or not (auth.accessor or auth.entity_id or auth.display_name)))


_NO_AUTH = _Auth()


def _auth_method(req: _Request, path: str, display: str, is_login: bool) -> str:
    if is_login:
        return req.mount_type or path.split("/")[1]
    head = display.split("-", 1)[0]
    return head if head in _KNOWN_METHODS else "token"


# (path, mount point, mount type, namespace) -> _resource(...): calls repeat their paths, so
# each is named once (and its strings are shared by its events). Bounded: cleared when full.
_RESOURCES: dict[tuple, tuple[bool, str, str]] = {}


def _resource(where: tuple) -> tuple[bool, str, str]:
    """(is a login, secret name, namespace) of a request path, cached in _RESOURCES."""
    path, mount_point, mount_type, ns_path = where
    namespace = (ns_path or "").strip("/")
    if len(_RESOURCES) >= _MAX_CACHED:
        _RESOURCES.clear()
    named = _RESOURCES[where] = (path[:5] == "auth/" and _is_login(path),
                                 _secret_name(mount_point or "", mount_type or "", path, namespace),
                                 namespace)
    return named


def _outcome(error: str) -> str:
    if not error:
        return SUCCESS
    if "permission denied" in error:
        return DENIED
    return FAILED


def _derived_id(e: VaultEntry) -> str:
    """Stable id for entries Vault logged without one (help requests, very old versions)."""
    req = e.line.request
    auth = e.line.auth or _NO_AUTH
    key = "\x1f".join((e.kind, repr(e.ts), req.operation or "", req.path or "",
                        auth.accessor or "", req.remote_address or ""))
    return "derived:" + hashlib.sha256(key.encode()).hexdigest()[:32]
