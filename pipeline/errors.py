"""Errors raised by secretscope.

Every library error subclasses :class:`SecretscopeError` and one builtin, so callers can catch
either the project base or the usual Python category::

    SecretscopeError
    ├── ParseError(ValueError)        one input record could not become an AccessEvent;
    │                                 names its origin (file:line, topic/partition/offset) and field
    ├── ConfigError(ValueError)       configuration is invalid; raised at start-up, names the key
    ├── ModelIntegrityError(ValueError)  a model file failed its integrity check
    ├── TrainingError(ValueError)     a batch model cannot be trained on the data given
    └── UnknownFindingError(LookupError) no stored finding has the id given (e.g. to label)
"""

from __future__ import annotations


class SecretscopeError(Exception):
    """Base of every error secretscope raises on purpose."""


class ParseError(SecretscopeError, ValueError):
    """A record could not be parsed. ``reason`` is a short stable code for metrics."""

    def __init__(self, reason: str, detail: str, origin: str = "", field: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.origin = origin
        self.field = field
        where = origin or "<unknown origin>"
        at = f" (field {field})" if field else ""
        super().__init__(f"{where}: {reason}{at}: {detail}")


class ConfigError(SecretscopeError, ValueError):
    """Configuration is invalid."""


class ModelIntegrityError(SecretscopeError, ValueError):
    """A saved model does not match its recorded checksum or holds untrusted types."""


class UnknownFindingError(SecretscopeError, LookupError):
    """No stored finding has the id that was given."""


class TrainingError(SecretscopeError, ValueError):
    """A batch model cannot be trained on the data given (too few rows, features missing)."""
