"""dead letters: unique on (origin, digest), size as a big integer

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

Replaying the same input into one store must not double its dead letters: a record is the same
when it comes from the same place (file:line, topic/partition/offset) with the same digest.
Copies stored before this revision are removed (the oldest row is kept) so the key can be built.
``size`` becomes a big integer because a skipped oversize line can be longer than 2 GiB. A store
made with ``metadata.create_all`` already has both and is left alone.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEX = "uq_dead_letters_origin_digest"


def _has_key() -> bool:
    if context.is_offline_mode():
        return False
    indexes = sa.inspect(op.get_bind()).get_indexes("dead_letters")
    return any(i["name"] == INDEX for i in indexes)


def upgrade() -> None:
    if _has_key():
        return
    op.execute(
        "DELETE FROM dead_letters WHERE id NOT IN "
        "(SELECT min(id) FROM dead_letters GROUP BY origin, digest)")
    # batch mode: SQLite cannot change a column's type in place, so it copies the table
    with op.batch_alter_table("dead_letters") as batch:
        batch.alter_column("size", existing_type=sa.Integer(), type_=sa.BigInteger(),
                           existing_nullable=False)
        batch.create_index(INDEX, ["origin", "digest"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_index(INDEX)
        batch.alter_column("size", existing_type=sa.BigInteger(), type_=sa.Integer(),
                           existing_nullable=False)
