"""Alembic environment for secretscope's store (tables defined in ``pipeline/store.py``).

Used two ways:

* programmatically by :func:`secretscope.store.migrate`, which passes an open connection in
  ``config.attributes["connection"]`` (the migration then runs in the caller's transaction);
* from the command line with the repository's ``alembic.ini``; the database URL is then
  ``sqlalchemy.url`` (``-x url=...`` also works) or, when that is empty, ``SECRETSCOPE_STORE_URL``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from secretscope.store import metadata

config = context.config

# Only configure logging when run from an ini file (the alembic CLI), never inside the application.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def _url() -> str:
    url = (context.get_x_argument(as_dictionary=True).get("url")
           or config.get_main_option("sqlalchemy.url")
           or os.environ.get("SECRETSCOPE_STORE_URL", ""))
    if not url:
        raise RuntimeError("no database URL: set SECRETSCOPE_STORE_URL, sqlalchemy.url in "
                           "alembic.ini, or pass -x url=...")
    return url


def _configure(**kw) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        **kw,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) instead of running it."""
    url = _url()
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
               render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
