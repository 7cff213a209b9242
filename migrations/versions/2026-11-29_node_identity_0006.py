"""Node identity: the node CA, one-time enrollment tokens and issued node certificates.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'node_ca',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('certificate_pem', sa.Text(), nullable=False),
        sa.Column('encrypted_private_key', sa.LargeBinary(), nullable=False),
        sa.Column('kek_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint('id = 1', name=op.f('ck_node_ca_single_row')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_node_ca')),
    )
    op.create_table(
        'enroll_tokens',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('secret_sha256', sa.LargeBinary(), nullable=False),
        sa.Column('node_group', sa.String(length=200), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('site', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('used_by', sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_enroll_tokens')),
        sa.UniqueConstraint('secret_sha256', name=op.f('uq_enroll_tokens_secret_sha256')),
    )
    op.create_table(
        'node_certificates',
        sa.Column('serial', sa.String(length=64), nullable=False),
        sa.Column('node_id', sa.String(length=256), nullable=False),
        sa.Column('node_group', sa.String(length=200), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('site', sa.String(length=200), nullable=False),
        sa.Column('not_before', sa.DateTime(timezone=True), nullable=False),
        sa.Column('not_after', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sha256', sa.LargeBinary(), nullable=False),
        sa.Column('token_id', sa.String(length=64), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('serial', name=op.f('pk_node_certificates')),
    )
    op.create_index(
        op.f('ix_node_certificates_node_id'), 'node_certificates', ['node_id'], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f('ix_node_certificates_node_id'), table_name='node_certificates')
    op.drop_table('node_certificates')
    op.drop_table('enroll_tokens')
    op.drop_table('node_ca')
