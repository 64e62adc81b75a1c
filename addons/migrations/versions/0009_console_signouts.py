"""Console sign-outs kept in the store: a session signed out through one replica's console is
refused by every replica sharing the store (each kept them only in its own keys/ before).

Revision ID: 0009_console_signouts
Revises: 0008_approval_client_left
Create Date: 2026-11-28 05:20:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from addons.core.models import UtcDateTime

# revision identifiers, used by Alembic.
revision: str = '0009_console_signouts'
down_revision: Union[str, Sequence[str], None] = '0008_approval_client_left'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('console_signouts',
    sa.Column('nonce', sa.String(length=64), nullable=False),
    sa.Column('until', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_console_signouts'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('console_signouts')
