"""delivery outbox and delivery dead letters

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Like 0001 and 0002, tables that already exist (a store made with ``metadata.create_all``) are
left alone.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _existing_tables() -> set[str]:
    if context.is_offline_mode():
        return set()
    return set(sa.inspect(op.get_bind()).get_table_names())


def upgrade() -> None:
    existing = _existing_tables()

    if "outbox" not in existing:
        op.create_table(
            "outbox",
            sa.Column("finding_id", sa.String(length=36), nullable=False),
            sa.Column("sink", sa.String(length=128), nullable=False),
            sa.Column("status", sa.String(length=10), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("last_error", sa.String(length=1024), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
            sa.CheckConstraint("status IN ('pending', 'delivered')", name="ck_outbox_status"),
            sa.ForeignKeyConstraint(["finding_id"], ["findings.id"],
                                    name="fk_outbox_finding_id", ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("finding_id", "sink"),
        )
        op.create_index("ix_outbox_due", "outbox", ["sink", "status", "next_attempt_at"],
                        unique=False)

    if "delivery_dead_letters" not in existing:
        op.create_table(
            "delivery_dead_letters",
            sa.Column("finding_id", sa.String(length=36), nullable=False),
            sa.Column("sink", sa.String(length=128), nullable=False),
            sa.Column("reason", sa.String(length=1024), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
            sa.ForeignKeyConstraint(["finding_id"], ["findings.id"],
                                    name="fk_delivery_dead_letters_finding_id",
                                    ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("finding_id", "sink"),
        )


def downgrade() -> None:
    op.drop_table("delivery_dead_letters")
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_table("outbox")
