"""The evidence store: sessions, calls, approvals, policy versions and chain checkpoints.

Times are zone-less UTC timestamps (core.models.UtcDateTime); JSON columns are plain ``json`` on
PostgreSQL so that numbers read back as written (the hash chain depends on it).

Revision ID: 0001
Revises:
Create Date: 2026-11-25 21:44:03.573047

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('approvals',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('binding_hash', sa.String(length=64), nullable=False),
    sa.Column('call_id', sa.String(length=64), nullable=True),
    sa.Column('rule', sa.String(), nullable=True),
    sa.Column('principal', sa.String(), nullable=False),
    sa.Column('action', sa.String(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('approver', sa.String(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('channel', sa.String(length=32), nullable=True),
    sa.Column('requested', sa.DateTime(), nullable=False),
    sa.Column('decided', sa.DateTime(), nullable=True),
    sa.Column('expires', sa.DateTime(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'approved', 'denied', 'expired', 'used')", name=op.f('ck_approvals_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approvals'))
    )
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_binding_hash_status'), ['binding_hash', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_approvals_status_requested'), ['status', 'requested'], unique=False)

    op.create_table('calls',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('session_id', sa.String(length=128), nullable=True),
    sa.Column('principal', sa.String(), nullable=True),
    sa.Column('issuer', sa.String(), nullable=True),
    sa.Column('on_behalf_of', sa.String(), nullable=True),
    sa.Column('groups', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('client', sa.String(), nullable=True),
    sa.Column('service', sa.String(), nullable=True),
    sa.Column('operation', sa.String(), nullable=True),
    sa.Column('action', sa.String(), nullable=True),
    sa.Column('access_level', sa.String(), nullable=True),
    sa.Column('region', sa.String(), nullable=True),
    sa.Column('account', sa.String(), nullable=True),
    sa.Column('resources', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('params', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('method', sa.String(length=16), nullable=True),
    sa.Column('host', sa.String(), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('request_headers', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('request_body_sha256', sa.String(length=64), nullable=True),
    sa.Column('request_body_size', sa.BigInteger(), nullable=True),
    sa.Column('request_body', sa.Text(), nullable=True),
    sa.Column('decision', sa.String(length=16), nullable=True),
    sa.Column('rule', sa.String(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('policy_version', sa.String(), nullable=True),
    sa.Column('approval_id', sa.String(length=64), nullable=True),
    sa.Column('approver', sa.String(), nullable=True),
    sa.Column('role', sa.String(), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('aws_request_id', sa.String(), nullable=True),
    sa.Column('response_headers', sa.JSON(none_as_null=True), nullable=True),
    sa.Column('response_body_sha256', sa.String(length=64), nullable=True),
    sa.Column('response_body_size', sa.BigInteger(), nullable=True),
    sa.Column('response_body', sa.Text(), nullable=True),
    sa.Column('truncated', sa.Boolean(), nullable=False),
    sa.Column('bytes_in', sa.BigInteger(), nullable=True),
    sa.Column('bytes_out', sa.BigInteger(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('writer_id', sa.String(length=128), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calls')),
    sa.UniqueConstraint('writer_id', 'seq', name=op.f('uq_calls_writer_id_seq'))
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calls_action_time'), ['action', 'time'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_approval_id'), ['approval_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_decision_time'), ['decision', 'time'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_principal_time'), ['principal', 'time'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_session_id_time'), ['session_id', 'time'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_time'), ['time'], unique=False)

    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('writer_id', sa.String(length=128), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('hmac', sa.String(length=64), nullable=True),
    sa.CheckConstraint("kind IN ('head', 'prune')", name=op.f('ck_checkpoints_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkpoints'))
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_writer_id_seq'), ['writer_id', 'seq'], unique=False)

    op.create_table('policy_versions',
    sa.Column('version', sa.String(length=128), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_policy_versions'))
    )
    op.create_table('sessions',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('principal', sa.String(), nullable=True),
    sa.Column('issuer', sa.String(), nullable=True),
    sa.Column('on_behalf_of', sa.String(), nullable=True),
    sa.Column('role', sa.String(), nullable=True),
    sa.Column('writer_id', sa.String(), nullable=False),
    sa.Column('started', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sessions'))
    )
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sessions_last_seen'), ['last_seen'], unique=False)
        batch_op.create_index(batch_op.f('ix_sessions_principal_last_seen'), ['principal', 'last_seen'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sessions_principal_last_seen'))
        batch_op.drop_index(batch_op.f('ix_sessions_last_seen'))

    op.drop_table('sessions')
    op.drop_table('policy_versions')
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_writer_id_seq'))

    op.drop_table('checkpoints')
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_time'))
        batch_op.drop_index(batch_op.f('ix_calls_session_id_time'))
        batch_op.drop_index(batch_op.f('ix_calls_principal_time'))
        batch_op.drop_index(batch_op.f('ix_calls_decision_time'))
        batch_op.drop_index(batch_op.f('ix_calls_approval_id'))
        batch_op.drop_index(batch_op.f('ix_calls_action_time'))

    op.drop_table('calls')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approvals_status_requested'))
        batch_op.drop_index(batch_op.f('ix_approvals_binding_hash_status'))

    op.drop_table('approvals')
