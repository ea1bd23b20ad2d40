"""initial schema: findings, dead_letters, snapshots

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Databases created before migrations existed (``metadata.create_all``) already hold some of these
tables with exactly this shape but have no ``alembic_version``; the tables (and their indexes)
that exist are left alone and only the missing ones are created, so such a database is adopted
rather than failing with "table already exists".
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _existing_tables() -> set[str]:
    if context.is_offline_mode():
        return set()
    return set(sa.inspect(op.get_bind()).get_table_names())


def upgrade() -> None:
    existing = _existing_tables()

    if "findings" not in existing:
        op.create_table(
            "findings",
            sa.Column("id", sa.String(length=36), nullable=False),
            sa.Column("time", sa.DateTime(timezone=True), nullable=False),
            sa.Column("identity", sa.String(length=512), nullable=False),
            sa.Column("display_name", sa.String(length=512), nullable=False),
            sa.Column("title", sa.String(length=512), nullable=False),
            sa.Column("severity_id", sa.Integer(), nullable=False),
            sa.Column("score", sa.Float(), nullable=False),
            sa.Column("detectors", sa.String(length=512), nullable=False),
            sa.Column("trigger_event_id", sa.String(length=128), nullable=False),
            sa.Column("ocsf", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_findings_time", "findings", ["time"], unique=False)
        op.create_index("ix_findings_identity", "findings", ["identity"], unique=False)

    if "dead_letters" not in existing:
        op.create_table(
            "dead_letters",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("origin", sa.String(length=1024), nullable=False),
            sa.Column("reason", sa.String(length=64), nullable=False),
            sa.Column("detail", sa.String(length=512), nullable=False),
            sa.Column("field", sa.String(length=128), nullable=False),
            sa.Column("digest", sa.String(length=64), nullable=False),
            sa.Column("size", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_dead_letters_reason", "dead_letters", ["reason"], unique=False)

    if "snapshots" not in existing:
        op.create_table(
            "snapshots",
            sa.Column("key", sa.String(length=512), nullable=False),
            sa.Column("next_offset", sa.BigInteger(), nullable=False),
            sa.Column("checksum", sa.String(length=64), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("key"),
        )


def downgrade() -> None:
    op.drop_table("snapshots")
    op.drop_index("ix_dead_letters_reason", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_findings_identity", table_name="findings")
    op.drop_index("ix_findings_time", table_name="findings")
    op.drop_table("findings")
