"""A session says whether its calls were made for several parties: ``sessions.on_behalf_of_varies``.
The role session is the principal's, whoever it acts for, so an agent acting for alice and then
for bob had one session that named alice alone. Such a session now names no party and says that
they vary (each call's record names its own); sessions already in the store are read so from
their calls.

Revision ID: 0012_session_parties
Revises: 0011_decision_index_for_refusals
Create Date: 2026-11-28 21:40:00.000000

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0012_session_parties'
down_revision: Union[str, Sequence[str], None] = '0011_decision_index_for_refusals'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('sessions', sa.Column('on_behalf_of_varies', sa.Boolean(), nullable=False,
                                        server_default=sa.text('false')))
    op.execute(sa.text(
        "UPDATE sessions SET on_behalf_of = NULL, on_behalf_of_varies = true WHERE "
        "(SELECT count(DISTINCT coalesce(calls.on_behalf_of, '')) FROM calls WHERE calls.session_id = sessions.id) > 1"))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('on_behalf_of_varies')
