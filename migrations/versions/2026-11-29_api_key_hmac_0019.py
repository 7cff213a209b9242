"""API keys stored as HMAC-SHA256 under a hash key sealed with the KEK; provider credentials
sealed to a node group's key.

``api_key_hash_key`` holds the sealed key (one row); ``api_keys.secret_hmac`` the digest of
keys of the format ``sbx_<id>_<secret>``. Keys of the earlier format keep their
``secret_sha256``; each row has exactly one of the two. ``node_groups.sealing_public_key``
is the X25519 key credentials are sealed to; ``providers.credential_sealed`` a credential
sealed to it (one of env, file and sealed at most).

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0019'
down_revision: str | None = '0018'
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
    op.add_column('node_groups', sa.Column('sealing_public_key', sa.LargeBinary(), nullable=True))
    op.add_column('providers', sa.Column('credential_sealed', sa.LargeBinary(), nullable=True))
    op.drop_constraint(op.f('ck_providers_credential_single_source'), 'providers', type_='check')
    op.create_check_constraint(
        op.f('ck_providers_credential_single_source'),
        'providers',
        "(credential_env <> '')::int + (credential_file <> '')::int + (credential_sealed IS NOT NULL)::int <= 1",
    )


def downgrade() -> None:
    # A sealed credential has no reference to fall back to: those providers lose it.
    op.drop_constraint(op.f('ck_providers_credential_single_source'), 'providers', type_='check')
    op.drop_column('providers', 'credential_sealed')
    op.create_check_constraint(
        op.f('ck_providers_credential_single_source'), 'providers', "credential_env = '' OR credential_file = ''"
    )
    op.drop_column('node_groups', 'sealing_public_key')
    # Keys of the new format cannot be turned back into SHA-256 digests: they go.
    op.execute('DELETE FROM api_keys WHERE secret_hmac IS NOT NULL')
    op.drop_constraint(op.f('ck_api_keys_one_digest'), 'api_keys', type_='check')
    op.alter_column('api_keys', 'secret_sha256', existing_type=sa.LargeBinary(), nullable=False)
    op.drop_constraint(op.f('uq_api_keys_secret_hmac'), 'api_keys', type_='unique')
    op.drop_column('api_keys', 'secret_hmac')
    op.drop_table('api_key_hash_key')
