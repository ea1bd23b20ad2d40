"""Turning a store URL into an engine, or into a configuration error that says what is wrong.

SQLAlchemy reports a URL it cannot parse, an unknown dialect and a driver that is not installed
as three different exceptions (the last one an ImportError from deep inside), none naming the
URL; a SQLite file in a folder that does not exist fails only at the first connection. Here each
becomes a :class:`~secretscope.errors.ConfigError` naming the URL, its password masked.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from secretscope.errors import ConfigError
from secretscope.redact import mask_url

EXAMPLES = "sqlite:///secretscope.db or postgresql+psycopg://user@host:5432/database"


def open_engine(url: str) -> Engine:
    """``create_engine(url)``, with a ConfigError for a URL that cannot work."""
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(f"store URL {shown!r} is not a database URL (for example {EXAMPLES})"
                          ) from None
    _check_sqlite_folder(parsed.get_backend_name(), parsed.database, shown)
    try:
        return create_engine(parsed)
    except NoSuchModuleError:
        raise ConfigError(f"store URL {shown!r}: unknown database {parsed.drivername!r} "
                          f"(for example {EXAMPLES})") from None
    except ImportError as exc:
        raise ConfigError(f"store URL {shown!r}: the driver for {parsed.drivername!r} is not "
                          f"installed ({exc}); secretscope ships the drivers for sqlite and "
                          "postgresql+psycopg") from None
    except ArgumentError as exc:
        raise ConfigError(f"store URL {shown!r}: {exc}") from None


def _check_sqlite_folder(backend: str, database: str | None, shown: str) -> None:
    """A SQLite file is created on first use, but not its folder."""
    if backend != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return
    path = Path(database).expanduser()
    if path.is_dir():
        raise ConfigError(f"store URL {shown!r}: {path} is a directory, not a database file")
    if not path.parent.is_dir():
        raise ConfigError(f"store URL {shown!r}: folder {path.parent} does not exist")
