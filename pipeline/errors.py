"""Errors raised by secretscope.

Every library error subclasses :class:`SecretscopeError` and one builtin, so callers can catch
either the project base or the usual Python category::

    SecretscopeError
    ├── ParseError(ValueError)        one input record could not become an AccessEvent;
    │                                 names its origin (file:line, topic/partition/offset) and field
    ├── ConfigError(ValueError)       configuration is invalid; raised at start-up, names the key
    ├── ModelIntegrityError(ValueError)  a model file failed its integrity check
    ├── TrainingError(ValueError)     a batch model cannot be trained on the data given
    ├── UnknownFindingError(LookupError) no stored finding has the id given (e.g. to label)
    ├── UsageError(ValueError)        a wrong invocation: a missing input file, a directory given
    │   │                             as a file, a missing output folder, a bad option value
    │   └── InputFormatError          no line of an input is an audit record secretscope reads
    └── StoreUnavailableError(ConnectionError)  (secretscope.store_retry) the store stayed
                                      unreachable past store.outage_seconds

The command line turns each into one ``error: ...`` line and one of the exit statuses below
(docs/errors.md lists the cases).
"""

from __future__ import annotations

EXIT_FAILURE = 1  # the surroundings failed at run time: store unreachable, disk, network
EXIT_USAGE = 2  # a wrong invocation or configuration: nothing was done
EXIT_INPUT_INCOMPLETE = 3  # replay ran to the end, but an input file was cut short or corrupt
EXIT_INTERNAL = 70  # a bug in secretscope (sysexits' EX_SOFTWARE): rerun with --debug, report it
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT)


class SecretscopeError(Exception):
    """Base of every error secretscope raises on purpose. ``exit_status`` is the command
    line's status for it: a usage or configuration error unless a subclass says otherwise."""

    exit_status = EXIT_USAGE


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


class UsageError(SecretscopeError, ValueError):
    """The command was called wrongly: an input that is missing or not a file, an output
    folder that does not exist, an option value out of range. Names the argument or option."""


class InputFormatError(UsageError):
    """An input holds no record of an audit format secretscope reads (a CSV file, an
    unsupported log). Names the file and why its first line was refused."""
