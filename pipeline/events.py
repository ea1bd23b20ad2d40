"""The normalized event every parser produces, and the dead letter for input that is not one.

An :class:`AccessEvent` holds identifiers and metadata only. Secret *values* (response data,
request bodies, Kubernetes objects) are never copied into it: parsers read the fields listed
here and nothing else, so a value cannot leak downstream by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import msgspec

# Outcome of one call, from the store's own verdict (Vault: the top-level ``error`` string).
SUCCESS = "success"
DENIED = "denied"  # authorization refused (permission denied, 403)
FAILED = "failed"  # any other error, including bad credentials on login


class AccessEvent(msgspec.Struct, frozen=True, gc=False):
    """One call against the secret store, request and response joined.

    A frozen struct rather than a frozen dataclass: one is built per call on the hot path, and a
    frozen dataclass spends ~2.7 us on 22 ``object.__setattr__`` calls where this takes 0.1 us.
    Immutable all the same, and it holds no references that could form a cycle (``gc=False``).
    """

    source: str  # audit format, e.g. "vault"
    event_id: str  # the store's request id (Vault request.id), or a derived "sha256:..." id
    ts: float  # event time of the request as POSIX seconds (microsecond precision)
    identity: str  # stable key: "entity:<id>", "accessor:<hmac>", "name:<display>", "login:<...>"
    display_name: str
    policies: tuple[str, ...]
    operation: str  # read, list, create, update, delete, ...
    path: str  # request path as logged
    secret: str  # normalized secret name: namespace + mount + key, KV v2 "data/" segments removed
    namespace: str  # "" for the root namespace
    mount_type: str
    remote_address: str  # without brackets or port
    user_agent: str
    outcome: str  # SUCCESS, DENIED or FAILED
    error: str  # short error text from the store ("" on success), never a value
    is_login: bool
    auth_method: str  # mount type of the login or token ("approle", "kubernetes", "token", ...)
    token_type: str
    phases: str  # which audit entries were seen: "request+response", "request" or "response"
    origin: str  # where the first entry came from: "file:line" or "topic/partition/offset"
    truncated: tuple[str, ...] = ()  # names of fields cut to the size limit

    @property
    def time(self) -> datetime:
        """UTC-aware event time (derived from ``ts``; windows use ``ts`` directly)."""
        return datetime.fromtimestamp(self.ts, timezone.utc)

    @property
    def is_root(self) -> bool:
        return "root" in self.policies


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not become an event. Holds a digest of the record, never its content,
    because a malformed line may still carry a secret value."""

    origin: str
    reason: str
    detail: str
    field: str
    digest: str  # sha256 of the raw bytes, to find the record again at its origin
    size: int
