"""An approval keeps when a try of its call first left before its hold ended (a client whose read
timeout is shorter than approval_hold), with a ``client_left`` event in the approval events'
chain: a retry that joins it is answered ApprovalPending at once on whichever worker or replica it
reaches. Approvals written before have none: NULL, which their rows' hashes omit.

Revision ID: 0008_approval_client_left
Revises: 0007_approval_actors
Create Date: 2026-11-28 09:40:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0008_approval_client_left'
down_revision: Union[str, Sequence[str], None] = '0007_approval_actors'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OLD_EVENTS = "event IN ('requested', 'approved', 'denied', 'expired', 'used', 'revoked', 'existing')"
NEW_EVENTS = "event IN ('requested', 'approved', 'denied', 'expired', 'used', 'revoked', 'existing', 'client_left')"


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('approvals', sa.Column('client_left', sa.DateTime(), nullable=True))
    with op.batch_alter_table('approval_events', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_approval_events_event'), type_='check')
        batch_op.create_check_constraint('event', NEW_EVENTS)


def downgrade() -> None:
    """Downgrade schema. Refused once a ``client_left`` event is in the store: it is a link of the
    approval events' hash chain, which removing it would break."""
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT 1 FROM approval_events WHERE event = 'client_left'")).first() is not None:
        raise RuntimeError("the approval events hold client_left events, links of their hash chain that an older "
                           "schema cannot hold: this store cannot go back before 0008_approval_client_left")
    with op.batch_alter_table('approval_events', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_approval_events_event'), type_='check')
        batch_op.create_check_constraint('event', OLD_EVENTS)
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_column('client_left')
