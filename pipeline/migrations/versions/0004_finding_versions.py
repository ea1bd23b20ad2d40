"""finding versions: every Create, Update and Close of a finding; outbox keyed by version

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Findings stored before this revision become version 1 of themselves (their newest state), and
their outbox and delivery dead-letter rows apply to that version. Like the earlier revisions,
what already exists in the new shape (a store made with ``metadata.create_all``) is left alone.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _columns(table: str) -> set[str]:
    if context.is_offline_mode():
        return set()
    inspector = sa.inspect(op.get_bind())
    if table not in inspector.get_table_names():
        return set()
    return {c["name"] for c in inspector.get_columns(table)}


def _versioned(name: str, columns: list[sa.Column], copy: str, fk: str) -> None:
    """Give ``name`` a ``version`` column in its key, its rows taken as version 1."""
    if "version" in _columns(name):
        return
    if op.get_bind().dialect.name == "postgresql":
        op.add_column(name, sa.Column("version", sa.Integer(), nullable=False,
                                      server_default="1"))
        op.alter_column(name, "version", server_default=None)  # only for the rows there now
        op.drop_constraint(f"{name}_pkey", name, type_="primary")
        op.create_primary_key(f"{name}_pkey", name, ["finding_id", "version", "sink"])
        return
    # SQLite cannot change a primary key in place: copy the rows into the new shape
    if name == "outbox":
        op.drop_index("ix_outbox_due", table_name="outbox")
    op.rename_table(name, f"{name}_unversioned")
    op.create_table(
        name,
        sa.Column("finding_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sink", sa.String(length=128), nullable=False),
        *columns,
        sa.ForeignKeyConstraint(["finding_id"], ["findings.id"],
                                name=fk, ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("finding_id", "version", "sink"),
    )
    op.execute(f"INSERT INTO {name} (finding_id, version, sink, {copy}) "
               f"SELECT finding_id, 1, sink, {copy} FROM {name}_unversioned")
    op.drop_table(f"{name}_unversioned")
    if name == "outbox":
        op.create_index("ix_outbox_due", "outbox", ["sink", "status", "next_attempt_at"])


def upgrade() -> None:
    have = _columns("findings")
    if "version" not in have:
        op.add_column("findings", sa.Column("version", sa.Integer(), nullable=False,
                                            server_default="1"))
    if "status_id" not in have:
        op.add_column("findings", sa.Column("status_id", sa.Integer(), nullable=False,
                                            server_default="1"))
    if "analyst_status_id" not in have:
        op.add_column("findings", sa.Column("analyst_status_id", sa.Integer(), nullable=True))

    if not _columns("finding_versions"):
        op.create_table(
            "finding_versions",
            sa.Column("finding_id", sa.String(length=36), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("pipeline_seq", sa.Integer(), nullable=True),
            sa.Column("origin", sa.String(length=16), nullable=False),
            sa.Column("activity_id", sa.Integer(), nullable=False),
            sa.Column("status_id", sa.Integer(), nullable=False),
            sa.Column("severity_id", sa.Integer(), nullable=False),
            sa.Column("ocsf", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["finding_id"], ["findings.id"],
                                    name="fk_finding_versions_finding_id", ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("finding_id", "version"),
        )
        op.create_index("ix_finding_versions_seq", "finding_versions",
                        ["finding_id", "pipeline_seq"], unique=True)
        op.execute("INSERT INTO finding_versions (finding_id, version, pipeline_seq, origin, "
                   "activity_id, status_id, severity_id, ocsf, created_at) "
                   "SELECT id, 1, 1, 'pipeline', 1, 1, severity_id, ocsf, created_at "
                   "FROM findings")

    for name, columns, copy, fk in _tables():
        _versioned(name, columns, copy, fk)


def _tables():  # fresh Column objects each time: a Column belongs to one table
    return [
        ("outbox", [
            sa.Column("status", sa.String(length=10), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_error", sa.String(length=1024), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
            sa.CheckConstraint("status IN ('pending', 'delivered')", name="ck_outbox_status"),
        ], "status, attempts, first_attempt_at, next_attempt_at, last_error, created_at, "
           "delivered_at", "fk_outbox_finding_id"),
        ("delivery_dead_letters", [
            sa.Column("reason", sa.String(length=1024), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
        ], "reason, attempts, dead_at", "fk_delivery_dead_letters_finding_id"),
    ]


def _unversioned(name: str, columns: list[sa.Column], copy: str, fk: str) -> None:
    """Back to one row per (finding, sink): only version 1's rows are kept."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DELETE FROM {name} WHERE version <> 1")
        op.drop_constraint(f"{name}_pkey", name, type_="primary")
        op.create_primary_key(f"{name}_pkey", name, ["finding_id", "sink"])
        op.drop_column(name, "version")
        return
    if name == "outbox":
        op.drop_index("ix_outbox_due", table_name="outbox")
    op.rename_table(name, f"{name}_versioned")
    op.create_table(
        name,
        sa.Column("finding_id", sa.String(length=36), nullable=False),
        sa.Column("sink", sa.String(length=128), nullable=False),
        *columns,
        sa.ForeignKeyConstraint(["finding_id"], ["findings.id"], name=fk, ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("finding_id", "sink"),
    )
    op.execute(f"INSERT INTO {name} (finding_id, sink, {copy}) "
               f"SELECT finding_id, sink, {copy} FROM {name}_versioned WHERE version = 1")
    op.drop_table(f"{name}_versioned")
    if name == "outbox":
        op.create_index("ix_outbox_due", "outbox", ["sink", "status", "next_attempt_at"])


def downgrade() -> None:
    """Lossy by nature: each finding keeps its newest state, deliveries their version 1."""
    for name, columns, copy, fk in _tables():
        _unversioned(name, columns, copy, fk)
    op.drop_index("ix_finding_versions_seq", table_name="finding_versions")
    op.drop_table("finding_versions")
    with op.batch_alter_table("findings") as batch:
        for column in ("analyst_status_id", "status_id", "version"):
            batch.drop_column(column)
