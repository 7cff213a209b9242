"""Snapshot retention: exported pins are marked, and each payload is stored once.

The envelope holds the exact payload bytes, so the separate ``payload`` column was a
second copy of every version. Before it is dropped, every row's envelope is checked to
carry that same payload (nothing becomes unreadable); a row where it does not stops the
upgrade with its version named. Downgrade fills the column again from the envelopes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 15:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from signalbox.api.config.v1 import snapshot_pb2

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _payload(envelope: bytes) -> bytes:
    message = snapshot_pb2.SignedEnvelope()
    message.ParseFromString(envelope)
    return message.payload


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text('SELECT version, payload, envelope FROM snapshots'))
    for version, payload, envelope in rows:
        if _payload(bytes(envelope)) != bytes(payload):
            raise RuntimeError(f'snapshot v{version}: its envelope does not carry its stored payload')
    op.add_column('snapshots', sa.Column('exported_at', sa.DateTime(timezone=True), nullable=True))
    op.drop_column('snapshots', 'payload')


def downgrade() -> None:
    op.add_column('snapshots', sa.Column('payload', sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    for version, envelope in bind.execute(sa.text('SELECT version, envelope FROM snapshots')).all():
        bind.execute(
            sa.text('UPDATE snapshots SET payload = :p WHERE version = :v'),
            {'p': _payload(bytes(envelope)), 'v': version},
        )
    op.alter_column('snapshots', 'payload', nullable=False)
    op.drop_column('snapshots', 'exported_at')
