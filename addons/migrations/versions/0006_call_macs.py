"""Each call record's own MAC: an HMAC with the chain key over the record's place in its writer's
chain (writer, seq, hash), written with the record. A record's hash anyone can recompute; its MAC
only a process holding the key, so a record rewritten with its chain recomputed, or the
checkpoints deleted, no longer passes ``agentgate verify``. Records written before stay without
one: their checkpoints vouch for them.

Revision ID: 0006_call_macs
Revises: 0005_lighter_indexes
Create Date: 2026-11-27 09:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0006_call_macs'
down_revision: Union[str, Sequence[str], None] = '0005_lighter_indexes'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('calls', sa.Column('mac', sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('mac')
