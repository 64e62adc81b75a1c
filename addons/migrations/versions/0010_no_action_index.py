"""No index on ``calls.action``: ``calls list --action`` compares actions without regard to case
and with wildcards (``s3:*``), ``lower(action) LIKE lower(...)`` on SQLite and ``ILIKE`` on
PostgreSQL, which neither database can look up in an index on the column: both read the calls
through the index on time and test each. The index was only written, a page more on every commit.

Revision ID: 0010_no_action_index
Revises: 0009_console_signouts
Create Date: 2026-11-28 15:00:00.000000

"""
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0010_no_action_index'
down_revision: Union[str, Sequence[str], None] = '0009_console_signouts'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_action_time'))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calls_action_time'), ['action', 'time'], unique=False)
