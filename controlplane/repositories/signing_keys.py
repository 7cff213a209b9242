"""Snapshot signing keys (stored sealed; unsealing is ``controlplane.keys``' job)."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import SigningKey

# Serializes first-start key generation across replicas sharing one database.
SIGNING_KEY_LOCK = 0x5B0C_0001


async def lock_generation(session: AsyncSession) -> None:
    """Take the transaction-scoped lock that serializes key generation."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SIGNING_KEY_LOCK})


async def newest_active(session: AsyncSession) -> SigningKey | None:
    return await session.scalar(
        select(SigningKey).where(SigningKey.active).order_by(SigningKey.created_at.desc()).limit(1)
    )


async def add(session: AsyncSession, row: SigningKey) -> None:
    session.add(row)
    await session.flush()


async def trusted(session: AsyncSession) -> list[tuple[str, bytes]]:
    """(key id, raw public key) of every active signing key, oldest first."""
    rows = await session.execute(
        select(SigningKey.key_id, SigningKey.public_key)
        .where(SigningKey.active)
        .order_by(SigningKey.created_at, SigningKey.key_id)
    )
    return [(kid, bytes(pub)) for kid, pub in rows]
