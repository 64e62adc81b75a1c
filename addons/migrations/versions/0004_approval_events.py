"""Approval events: every change of an approval's row, in one hash chain for the store, each event
carrying the SHA-256 of the row as the change left it (and an HMAC with the chain key where its
writer held the key). Approvals already in the store get one ``existing`` event each, in the order
they were asked for, so that the table is covered from this revision on.

Revision ID: 0004_approval_events
Revises: 0003_masking
Create Date: 2026-11-26 16:50:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from addons.core import chain
from addons.core.models import Json, UtcDateTime

# revision identifiers, used by Alembic.
revision: str = '0004_approval_events'
down_revision: Union[str, Sequence[str], None] = '0003_masking'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

EVENTS = "event IN ('requested', 'approved', 'denied', 'expired', 'used', 'revoked', 'existing')"

# The approvals table as it stands at this revision, read with the types the store reads it with
# (aware UTC times, JSON as data), so that each row's hash is the one `agentgate verify` computes.
APPROVALS = sa.table(
    'approvals',
    sa.column('id', sa.String), sa.column('kind', sa.String), sa.column('binding_hash', sa.String),
    sa.column('call_id', sa.String), sa.column('rule', sa.String), sa.column('policy_version', sa.String),
    sa.column('principal', sa.String), sa.column('issuer', sa.String), sa.column('on_behalf_of', sa.String),
    sa.column('action', sa.String), sa.column('service', sa.String), sa.column('operation', sa.String),
    sa.column('region', sa.String), sa.column('resources', Json), sa.column('params', Json),
    sa.column('role', sa.String), sa.column('approvers', Json), sa.column('request_reason', sa.Text),
    sa.column('duration', sa.Integer), sa.column('status', sa.String), sa.column('approver', sa.String),
    sa.column('reason', sa.Text), sa.column('channel', sa.String), sa.column('requested', UtcDateTime),
    sa.column('decided', UtcDateTime), sa.column('expires', UtcDateTime), sa.column('used', UtcDateTime),
    sa.column('revoked', UtcDateTime), sa.column('revoked_by', sa.String), sa.column('revoke_reason', sa.Text),
)

EVENTS_TABLE = sa.table(
    'approval_events',
    sa.column('seq', sa.BigInteger), sa.column('approval_id', sa.String), sa.column('event', sa.String),
    sa.column('time', UtcDateTime), sa.column('actor', sa.String), sa.column('reason', sa.Text),
    sa.column('channel', sa.String), sa.column('writer', sa.String), sa.column('state_hash', sa.String),
    sa.column('prev_hash', sa.String), sa.column('hash', sa.String), sa.column('mac', sa.String),
)


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'approval_events',
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('approval_id', sa.String(length=64), nullable=False),
        sa.Column('event', sa.String(length=16), nullable=False),
        sa.Column('time', sa.DateTime(), nullable=False),
        sa.Column('actor', sa.String(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('channel', sa.String(length=32), nullable=True),
        sa.Column('writer', sa.String(length=128), nullable=True),
        sa.Column('state_hash', sa.String(length=64), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('mac', sa.String(length=64), nullable=True),
        sa.CheckConstraint(EVENTS, name=op.f('ck_approval_events_event')),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_approval_events')),
    )
    with op.batch_alter_table('approval_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approval_events_approval_id'), ['approval_id'], unique=False)

    conn = op.get_bind()
    rows = conn.execute(sa.select(APPROVALS).order_by(APPROVALS.c.requested, APPROVALS.c.id)).all()
    out, prev = [], chain.GENESIS
    for seq, row in enumerate(rows, 1):
        content = {"seq": seq, "approval_id": row.id, "event": "existing", "time": row.requested,
                   "channel": "migration", "writer": f"migration {revision}",
                   "state_hash": chain.approval_state_hash(row._mapping), "prev_hash": prev}
        content["hash"] = prev = chain.record_hash(content)
        out.append({**content, "actor": None, "reason": None, "mac": None})
    if out:
        conn.execute(sa.insert(EVENTS_TABLE), out)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('approval_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approval_events_approval_id'))
    op.drop_table('approval_events')
