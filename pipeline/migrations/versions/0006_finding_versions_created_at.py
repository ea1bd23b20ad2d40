"""finding versions: an index on the time each version was stored

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

``secretscope deliver`` routes the versions stored since its previous pass to the sinks of its
config (secretscope.delivery.routing); this index keeps that pass from reading every version's
document. A store made with ``metadata.create_all`` already has it and is left alone.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEX = "ix_finding_versions_created_at"


def _has_index() -> bool:
    if context.is_offline_mode():
        return False
    indexes = sa.inspect(op.get_bind()).get_indexes("finding_versions")
    return any(i["name"] == INDEX for i in indexes)


def upgrade() -> None:
    if not _has_index():
        op.create_index(INDEX, "finding_versions", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="finding_versions")
