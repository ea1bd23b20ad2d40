"""feature history (for batch training) and analysts' labels on findings

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Like 0001, tables that already exist (a store made with ``metadata.create_all``) are left alone.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _existing_tables() -> set[str]:
    if context.is_offline_mode():
        return set()
    return set(sa.inspect(op.get_bind()).get_table_names())


def upgrade() -> None:
    existing = _existing_tables()

    if "feature_sets" not in existing:
        op.create_table(
            "feature_sets",
            sa.Column("names_hash", sa.String(length=16), nullable=False),
            sa.Column("names", sa.Text(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("names_hash"),
        )

    if "feature_history" not in existing:
        op.create_table(
            "feature_history",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("identity", sa.String(length=512), nullable=False),
            sa.Column("event_id", sa.String(length=128), nullable=False),
            sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
            sa.Column("names_hash", sa.String(length=16), nullable=False),
            sa.Column("feature_values", sa.LargeBinary(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_feature_history_event_time", "feature_history", ["event_time"],
                        unique=False)
        op.create_index("ix_feature_history_event_id", "feature_history", ["event_id"],
                        unique=True)

    if "labels" not in existing:
        op.create_table(
            "labels",
            sa.Column("finding_id", sa.String(length=36), nullable=False),
            sa.Column("identity", sa.String(length=512), nullable=False),
            sa.Column("label", sa.String(length=2), nullable=False),
            sa.Column("note", sa.String(length=1024), nullable=False),
            sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
            sa.CheckConstraint("label IN ('tp', 'fp')", name="ck_labels_label"),
            sa.ForeignKeyConstraint(["finding_id"], ["findings.id"],
                                    name="fk_labels_finding_id", ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("finding_id"),
        )
        op.create_index("ix_labels_identity", "labels", ["identity"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_labels_identity", table_name="labels")
    op.drop_table("labels")
    op.drop_index("ix_feature_history_event_id", table_name="feature_history")
    op.drop_index("ix_feature_history_event_time", table_name="feature_history")
    op.drop_table("feature_history")
    op.drop_table("feature_sets")
