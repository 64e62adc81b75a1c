"""Masking: each call lists what was masked in its bodies (part, member path, what masked it, how
many values; never a value), and notes why a body is not kept or how it was.

Revision ID: 0003_masking
Revises: 0002_approvals
Create Date: 2026-11-27 16:40:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0003_masking'
down_revision: Union[str, Sequence[str], None] = '0002_approvals'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('masked', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('body_note', sa.Text(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('body_note')
        batch_op.drop_column('masked')
