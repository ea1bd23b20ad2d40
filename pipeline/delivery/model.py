"""The types at the delivery boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Delivery:
    """One version of a finding to send to one sink: its id, severity, OCSF document (the
    canonical form stored with the version; sinks render other formats from it) and version
    number (Create is 1; the document's ``activity_id`` says Create, Update or Close)."""

    finding_id: str
    severity_id: int
    ocsf: dict[str, Any]
    version: int = 1

    @property
    def key(self) -> str:
        """Unique per version: the receiver's idempotency key where a product wants one."""
        return f"{self.finding_id}.{self.version}"

    @property
    def activity_id(self) -> int:
        return int(self.ocsf.get("activity_id", 1))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one delivery. ``retryable`` failures are tried again under the retry
    policy (honouring ``retry_after`` seconds if the product said so); others are dead-lettered
    with ``reason``."""

    finding_id: str
    ok: bool
    retryable: bool = False
    reason: str = ""
    retry_after: float | None = None

    @classmethod
    def delivered(cls, finding_id: str) -> "Outcome":
        return cls(finding_id, True)


@runtime_checkable
class Sink(Protocol):
    name: str
    batch_size: int

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        """Send up to ``batch_size`` deliveries; one outcome per item, in order. Must not raise
        for network errors or product errors: those become outcomes."""
        ...

    def close(self) -> None:
        ...
