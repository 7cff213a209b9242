"""Policies name the models they may use: existing policies keep what they could reach.

A policy without ``allowed_models`` used to reach the whole registry; now it
reaches only its ``default_model`` (and one with neither is refused). So that an
upgrade changes no tenant's routing and the control plane can still compile its
snapshot, each tenant's newest policy without ``allowed_models`` gets a new
version listing every model registered at upgrade time (models added later are
not visible until an admin lists them). The new version is recorded as made by
this migration, so the policy history shows what happened and when.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 14:00:00
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTOR = "migration:0003 explicit model visibility"


def upgrade() -> None:
    bind = op.get_bind()
    aliases = sorted(row[0] for row in bind.execute(sa.text("SELECT alias FROM models")))
    newest = bind.execute(
        sa.text(
            "SELECT DISTINCT ON (tenant_id) tenant_id, version, document_json, deleted FROM policies "
            "ORDER BY tenant_id, version DESC"
        )
    )
    for tenant_id, version, document_json, deleted in newest.fetchall():
        if deleted:
            continue
        document = json.loads(document_json)
        if not isinstance(document, dict) or "allowed_models" in document:
            continue
        document["allowed_models"] = aliases
        bind.execute(
            sa.text(
                "INSERT INTO policies (id, tenant_id, version, document_json, deleted, created_by) "
                "VALUES (:id, :tenant_id, :version, :document_json, false, :actor)"
            ),
            {
                "id": uuid.uuid4(),
                "tenant_id": tenant_id,
                "version": version + 1,
                "document_json": json.dumps(
                    document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
                ),
                "actor": ACTOR,
            },
        )


def downgrade() -> None:
    # The versions this migration added are history like any other; older code reads them.
    pass
