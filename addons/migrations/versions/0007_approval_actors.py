"""An approval keeps the whole chain of its token's ``act`` claim when it nests (an agent acting
for an orchestrator acting for a person): every party in it is kept from approving, not only the
first (``on_behalf_of``). Approvals written before have none: NULL, which their rows' hashes omit.

Revision ID: 0007_approval_actors
Revises: 0006_call_macs
Create Date: 2026-11-27 12:20:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0007_approval_actors'
down_revision: Union[str, Sequence[str], None] = '0006_call_macs'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('approvals', sa.Column('actors', sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_column('actors')
