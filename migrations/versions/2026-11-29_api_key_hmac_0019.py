"""API keys stored as HMAC-SHA256 under a hash key sealed with the KEK.

``api_key_hash_key`` holds the sealed key (one row); ``api_keys.secret_hmac`` the digest of
keys of the format ``sbx_<id>_<secret>``. Keys of the earlier format keep their
``secret_sha256``; each row has exactly one of the two.

Revision ID: 0019
Revises: 0016
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0019'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'api_key_hash_key',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('sealed_key', sa.LargeBinary(), nullable=False),
        sa.Column('kek_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint('id = 1', name=op.f('ck_api_key_hash_key_single_row')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_api_key_hash_key')),
    )
    op.add_column('api_keys', sa.Column('secret_hmac', sa.LargeBinary(), nullable=True))
    op.create_unique_constraint(op.f('uq_api_keys_secret_hmac'), 'api_keys', ['secret_hmac'])
    op.alter_column('api_keys', 'secret_sha256', existing_type=sa.LargeBinary(), nullable=True)
    op.create_check_constraint(
        op.f('ck_api_keys_one_digest'), 'api_keys', '(secret_sha256 IS NULL) <> (secret_hmac IS NULL)'
    )


def downgrade() -> None:
    # Keys of the new format cannot be turned back into SHA-256 digests: they go.
    op.execute('DELETE FROM api_keys WHERE secret_hmac IS NOT NULL')
    op.drop_constraint(op.f('ck_api_keys_one_digest'), 'api_keys', type_='check')
    op.alter_column('api_keys', 'secret_sha256', existing_type=sa.LargeBinary(), nullable=False)
    op.drop_constraint(op.f('uq_api_keys_secret_hmac'), 'api_keys', type_='unique')
    op.drop_column('api_keys', 'secret_hmac')
    op.drop_table('api_key_hash_key')
