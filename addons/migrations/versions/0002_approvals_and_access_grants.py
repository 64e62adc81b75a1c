"""Approvals: what a held call asked for (service, operation, region, resources, masked
parameters, role, approvers), access grants (``kind = "grant"``, status ``revoked``, who revoked
them and why), and at most one pending approval per binding hash.

Revision ID: 0002_approvals
Revises: 0001
Create Date: 2026-11-27 10:12:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0002_approvals'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OLD_STATUSES = "status IN ('pending', 'approved', 'denied', 'expired', 'used')"
NEW_STATUSES = "status IN ('pending', 'approved', 'denied', 'expired', 'used', 'revoked')"
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=8), server_default='call', nullable=False))
        batch_op.add_column(sa.Column('policy_version', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('issuer', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('on_behalf_of', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('service', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('operation', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('region', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('resources', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('params', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('role', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('approvers', sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column('request_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('duration', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('used', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('revoked', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('revoked_by', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('revoke_reason', sa.Text(), nullable=True))
        batch_op.drop_constraint(op.f('ck_approvals_status'), type_='check')
        batch_op.create_check_constraint('status', NEW_STATUSES)
        batch_op.create_index('uq_approvals_pending_binding', ['binding_hash'], unique=True,
                              sqlite_where=PENDING, postgresql_where=PENDING)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("UPDATE approvals SET status = 'expired' WHERE status = 'revoked'")
    op.execute("DELETE FROM approvals WHERE kind = 'grant'")
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index('uq_approvals_pending_binding')
        batch_op.drop_constraint(op.f('ck_approvals_status'), type_='check')
        batch_op.create_check_constraint('status', OLD_STATUSES)
        for column in ('revoke_reason', 'revoked_by', 'revoked', 'used', 'duration', 'request_reason', 'approvers',
                       'role', 'params', 'resources', 'region', 'operation', 'service', 'on_behalf_of', 'issuer',
                       'policy_version', 'kind'):
            batch_op.drop_column(column)
