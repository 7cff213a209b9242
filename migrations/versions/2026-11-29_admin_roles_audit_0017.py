"""Admin roles scoped to tenants, admin identities by mTLS, and an append-only audit trail.

- ``admin_tokens``: roles become ``platform_admin``, ``tenant_admin`` and ``auditor``;
  existing tokens keep what they could do: ``admin`` -> ``platform_admin``, ``viewer`` ->
  ``auditor`` (platform-wide). A token may be bound to a tenant (required for
  ``tenant_admin``).
- ``admin_mtls_identities``: a client certificate's URI SAN mapped to a role (and tenant).
- ``audit_log``: the actor's role and tenant, the tenant the call was about, and SHA-256
  digests of the target before and after. Append-only as the evidence tables are
  (migration 0012): UPDATE, DELETE and TRUNCATE are revoked from PUBLIC and, when the role
  running the migration is not a superuser, from that role; a trigger refuses them for
  every role, superusers included.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29 23:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = "role IN ('platform_admin', 'tenant_admin', 'auditor')"
ROLE_TENANT = (
    "(role = 'platform_admin' AND tenant_id IS NULL) OR (role = 'tenant_admin' AND tenant_id IS NOT NULL)"
    " OR role = 'auditor'"
)


def upgrade() -> None:
    op.drop_constraint(op.f('ck_admin_tokens_role_known'), 'admin_tokens', type_='check')
    op.execute("UPDATE admin_tokens SET role = 'platform_admin' WHERE role = 'admin'")
    op.execute("UPDATE admin_tokens SET role = 'auditor' WHERE role = 'viewer'")
    op.alter_column('admin_tokens', 'role', server_default='platform_admin')
    op.add_column('admin_tokens', sa.Column('tenant_id', sa.Uuid(), nullable=True))
    op.add_column('admin_tokens', sa.Column('created_by', sa.String(length=200), server_default='', nullable=False))
    op.create_foreign_key(
        op.f('fk_admin_tokens_tenant_id_tenants'), 'admin_tokens', 'tenants', ['tenant_id'], ['id'], ondelete='CASCADE'
    )
    op.create_index(op.f('ix_admin_tokens_tenant_id'), 'admin_tokens', ['tenant_id'], unique=False)
    op.create_check_constraint(op.f('ck_admin_tokens_role_known'), 'admin_tokens', ROLES)
    op.create_check_constraint(op.f('ck_admin_tokens_role_tenant'), 'admin_tokens', ROLE_TENANT)

    op.create_table(
        'admin_mtls_identities',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('uri', sa.Text(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.Uuid(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint(ROLES, name=op.f('ck_admin_mtls_identities_role_known')),
        sa.CheckConstraint(ROLE_TENANT, name=op.f('ck_admin_mtls_identities_role_tenant')),
        sa.ForeignKeyConstraint(
            ['tenant_id'], ['tenants.id'], name=op.f('fk_admin_mtls_identities_tenant_id_tenants'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_mtls_identities')),
        sa.UniqueConstraint('uri', name=op.f('uq_admin_mtls_identities_uri')),
    )
    op.create_index(
        op.f('ix_admin_mtls_identities_tenant_id'), 'admin_mtls_identities', ['tenant_id'], unique=False
    )

    for column in ('actor_role', 'actor_tenant', 'tenant', 'before_sha256', 'after_sha256'):
        width = 32 if column == 'actor_role' else 64
        op.add_column('audit_log', sa.Column(column, sa.String(length=width), server_default='', nullable=False))
    op.create_index(op.f('ix_audit_log_tenant'), 'audit_log', ['tenant'], unique=False)

    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the admin audit log is append-only: % is refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        'CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log '
        'FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()'
    )
    op.execute(
        'CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()'
    )
    op.execute('REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC')
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM ' || quote_ident(current_user);
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    op.execute('DROP TRIGGER audit_log_no_truncate ON audit_log')
    op.execute('DROP TRIGGER audit_log_append_only ON audit_log')
    op.execute('DROP FUNCTION audit_log_append_only()')
    op.drop_index(op.f('ix_audit_log_tenant'), table_name='audit_log')
    for column in ('after_sha256', 'before_sha256', 'tenant', 'actor_tenant', 'actor_role'):
        op.drop_column('audit_log', column)
    op.drop_index(op.f('ix_admin_mtls_identities_tenant_id'), table_name='admin_mtls_identities')
    op.drop_table('admin_mtls_identities')
    op.drop_constraint(op.f('ck_admin_tokens_role_tenant'), 'admin_tokens', type_='check')
    op.drop_constraint(op.f('ck_admin_tokens_role_known'), 'admin_tokens', type_='check')
    # Tenant-scoped tokens have no meaning before this revision: they go.
    op.execute("DELETE FROM admin_tokens WHERE tenant_id IS NOT NULL")
    op.drop_index(op.f('ix_admin_tokens_tenant_id'), table_name='admin_tokens')
    op.drop_constraint(op.f('fk_admin_tokens_tenant_id_tenants'), 'admin_tokens', type_='foreignkey')
    op.drop_column('admin_tokens', 'created_by')
    op.drop_column('admin_tokens', 'tenant_id')
    op.execute("UPDATE admin_tokens SET role = 'admin' WHERE role = 'platform_admin'")
    op.execute("UPDATE admin_tokens SET role = 'viewer' WHERE role = 'auditor'")
    op.alter_column('admin_tokens', 'role', server_default='admin')
    op.create_check_constraint(op.f('ck_admin_tokens_role_known'), 'admin_tokens', "role IN ('admin', 'viewer')")
