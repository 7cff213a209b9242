"""Snapshot signing keys (stored sealed; unsealing is ``controlplane.keys``' job)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import SigningKey, TrustStatement

# Serializes key generation, rotation, revocation and re-sealing across replicas.
SIGNING_KEY_LOCK = 0x5B0C_0001

ACTIVE, RETIRING, REVOKED = "active", "retiring", "revoked"
STATES = (ACTIVE, RETIRING, REVOKED)


async def lock_generation(session: AsyncSession) -> None:
    """Take the transaction-scoped lock that serializes changes to the signing keys."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SIGNING_KEY_LOCK})


async def newest_active(session: AsyncSession) -> SigningKey | None:
    return await session.scalar(
        select(SigningKey).where(SigningKey.state == ACTIVE).order_by(SigningKey.created_at.desc()).limit(1)
    )


async def signing(session: AsyncSession) -> Sequence[SigningKey]:
    """The keys that sign: the active one(s) newest first, then the retiring ones."""
    rows = await session.scalars(
        select(SigningKey)
        .where(SigningKey.state.in_((ACTIVE, RETIRING)))
        .order_by(SigningKey.state, SigningKey.created_at.desc(), SigningKey.key_id)
    )
    return rows.all()


async def every(session: AsyncSession, *, for_update: bool = False) -> Sequence[SigningKey]:
    """Every key, oldest first."""
    query = select(SigningKey).order_by(SigningKey.created_at, SigningKey.key_id)
    if for_update:
        query = query.with_for_update()
    return (await session.scalars(query)).all()


async def get(session: AsyncSession, key_id: str) -> SigningKey | None:
    return await session.scalar(select(SigningKey).where(SigningKey.key_id == key_id))


async def add(session: AsyncSession, row: SigningKey) -> None:
    session.add(row)
    await session.flush()


async def trusted(session: AsyncSession) -> list[tuple[str, bytes, str]]:
    """(key id, raw public key, state) of every signing key, oldest first. Revoked keys are
    listed too: that is how nodes learn to drop them."""
    rows = await session.execute(
        select(SigningKey.key_id, SigningKey.public_key, SigningKey.state).order_by(
            SigningKey.created_at, SigningKey.key_id
        )
    )
    return [(kid, bytes(pub), state) for kid, pub, state in rows]


async def add_statement(session: AsyncSession, row: TrustStatement) -> None:
    session.add(row)
    await session.flush()


async def chain(session: AsyncSession, *, newest: int) -> list[bytes]:
    """The envelopes of the newest ``newest`` trust statements, oldest first."""
    rows = await session.scalars(
        select(TrustStatement.envelope).order_by(TrustStatement.id.desc()).limit(newest)
    )
    return [bytes(envelope) for envelope in reversed(rows.all())]
