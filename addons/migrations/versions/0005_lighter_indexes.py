"""Fewer index pages written per call: each commit writes every page it changed to the WAL (SQLite)
or the heap and its indexes (PostgreSQL), so every index a call touches costs each commit.

- ``sessions``: its indexes on ``last_seen`` moved on every call (each call updates its session's
  ``last_seen``), two index pages per commit for a table that holds one row per principal and role
  (``sessions list`` sorts it whole, which a table that size does not notice). Dropped.
- ``calls.approval_id``: most calls have none, and each one added a NULL entry to the index all the
  same. The index now holds only the calls that name an approval, which are the ones looked up by
  it (``approval_id = ...`` and ``approval_id IS NOT NULL`` both imply the index's condition).

Revision ID: 0005_lighter_indexes
Revises: 0004_approval_events
Create Date: 2026-11-27 00:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0005_lighter_indexes'
down_revision: Union[str, Sequence[str], None] = '0004_approval_events'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NAMES_AN_APPROVAL = sa.text("approval_id IS NOT NULL")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sessions_principal_last_seen'))
        batch_op.drop_index(batch_op.f('ix_sessions_last_seen'))
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_approval_id'))
        batch_op.create_index(batch_op.f('ix_calls_approval_id'), ['approval_id'], unique=False,
                              sqlite_where=NAMES_AN_APPROVAL, postgresql_where=NAMES_AN_APPROVAL)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_approval_id'))
        batch_op.create_index(batch_op.f('ix_calls_approval_id'), ['approval_id'], unique=False)
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sessions_last_seen'), ['last_seen'], unique=False)
        batch_op.create_index(batch_op.f('ix_sessions_principal_last_seen'), ['principal', 'last_seen'], unique=False)
