"""The index on ``calls.decision`` holds only the calls that were not allowed: ``calls list
--decision deny`` (or approve) looks those up through it, while allowed calls, most of any store,
are found as quickly by reading the calls through the index on time, and no longer write a page of
this index on every commit.

Revision ID: 0011_decision_index_for_refusals
Revises: 0010_no_action_index
Create Date: 2026-11-28 16:30:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0011_decision_index_for_refusals'
down_revision: Union[str, Sequence[str], None] = '0010_no_action_index'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NOT_ALLOWED = "decision <> 'allow'"


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_decision_time'))
        batch_op.create_index(batch_op.f('ix_calls_decision_time'), ['decision', 'time'], unique=False,
                              sqlite_where=sa.text(NOT_ALLOWED), postgresql_where=sa.text(NOT_ALLOWED))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_decision_time'))
        batch_op.create_index(batch_op.f('ix_calls_decision_time'), ['decision', 'time'], unique=False)
