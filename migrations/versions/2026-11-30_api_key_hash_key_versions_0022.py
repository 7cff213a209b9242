"""Versions of the API-key hash key: ``api_key_hash_key`` holds one row per version (the row
that exists becomes version 1), a retired version's key destroyed; ``api_keys.hash_key_version``
names the version each HMAC digest is under (1 for every existing one).

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30 09:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0022'
down_revision: str | None = '0021'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f('ck_api_key_hash_key_single_row'), 'api_key_hash_key', type_='check')
    op.create_check_constraint(op.f('ck_api_key_hash_key_version_positive'), 'api_key_hash_key', 'id >= 1')
    op.add_column('api_key_hash_key', sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True))
    op.alter_column('api_key_hash_key', 'sealed_key', existing_type=sa.LargeBinary(), nullable=True)
    op.create_check_constraint(
        op.f('ck_api_key_hash_key_retired_forgotten'),
        'api_key_hash_key',
        '(sealed_key IS NULL) = (retired_at IS NOT NULL)',
    )
    op.add_column('api_keys', sa.Column('hash_key_version', sa.Integer(), nullable=True))
    op.execute('UPDATE api_keys SET hash_key_version = 1 WHERE secret_hmac IS NOT NULL')
    op.create_foreign_key(
        op.f('fk_api_keys_hash_key_version_api_key_hash_key'),
        'api_keys',
        'api_key_hash_key',
        ['hash_key_version'],
        ['id'],
        ondelete='RESTRICT',
    )
    op.create_index(op.f('ix_api_keys_hash_key_version'), 'api_keys', ['hash_key_version'], unique=False)
    op.create_check_constraint(
        op.f('ck_api_keys_hmac_has_version'), 'api_keys', '(secret_hmac IS NULL) = (hash_key_version IS NULL)'
    )


def downgrade() -> None:
    # One version only before: keys under any other cannot be verified any more, so they go,
    # and so do the other versions.
    op.execute('DELETE FROM api_keys WHERE hash_key_version IS NOT NULL AND hash_key_version <> 1')
    op.drop_constraint(op.f('ck_api_keys_hmac_has_version'), 'api_keys', type_='check')
    op.drop_index(op.f('ix_api_keys_hash_key_version'), table_name='api_keys')
    op.drop_constraint(op.f('fk_api_keys_hash_key_version_api_key_hash_key'), 'api_keys', type_='foreignkey')
    op.drop_column('api_keys', 'hash_key_version')
    op.execute('DELETE FROM api_key_hash_key WHERE id <> 1 OR sealed_key IS NULL')
    op.drop_constraint(op.f('ck_api_key_hash_key_retired_forgotten'), 'api_key_hash_key', type_='check')
    op.alter_column('api_key_hash_key', 'sealed_key', existing_type=sa.LargeBinary(), nullable=False)
    op.drop_column('api_key_hash_key', 'retired_at')
    op.drop_constraint(op.f('ck_api_key_hash_key_version_positive'), 'api_key_hash_key', type_='check')
    op.create_check_constraint(op.f('ck_api_key_hash_key_single_row'), 'api_key_hash_key', 'id = 1')
