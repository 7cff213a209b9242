"""Enrollment tokens and issued node certificates, and the channel announcing revocations."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import EnrollToken, NodeCertificate

REVOKE_CHANNEL = "signalbox_node_revoked"
"""Postgres channel every replica LISTENs on; the payload is the revoked node id."""
NODE_IDENTITY_LOCK = 0x5B0C_0002
"""Advisory lock class: issuing and revoking a node's certificates are serialized per node."""


async def lock_node(session: AsyncSession, node_id: str) -> None:
    """Take the transaction-scoped lock of ``node_id``'s certificates, so a renewal racing a
    revocation either happens before it (and is revoked with the rest) or sees it."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(:k, hashtext(:n))"), {"k": NODE_IDENTITY_LOCK, "n": node_id}
    )


async def token(session: AsyncSession, token_id: str) -> EnrollToken | None:
    return await session.get(EnrollToken, token_id)


async def tokens(session: AsyncSession) -> Sequence[EnrollToken]:
    return (await session.scalars(select(EnrollToken).order_by(EnrollToken.created_at))).all()


async def consume(session: AsyncSession, token_id: str, digest: bytes, node_id: str) -> EnrollToken | None:
    """Mark the token used by ``node_id`` if it is unused, unexpired and ``digest`` matches;
    atomic, so two nodes racing with one token cannot both win. None: not consumed."""
    return await session.scalar(
        update(EnrollToken)
        .where(
            EnrollToken.id == token_id,
            EnrollToken.secret_sha256 == digest,
            EnrollToken.used_at.is_(None),
            EnrollToken.expires_at > func.now(),
        )
        .values(used_at=func.now(), used_by=node_id)
        .returning(EnrollToken)
        .execution_options(synchronize_session=False)
    )


async def in_force(session: AsyncSession, node_id: str) -> Sequence[NodeCertificate]:
    """The certificates of ``node_id`` that are neither revoked nor expired."""
    return (
        await session.scalars(
            select(NodeCertificate).where(
                NodeCertificate.node_id == node_id,
                NodeCertificate.revoked_at.is_(None),
                NodeCertificate.not_after > func.now(),
            )
        )
    ).all()


async def last_renewal(session: AsyncSession, node_id: str) -> datetime | None:
    """When ``node_id`` was last issued a certificate without a token (renewed or provisioned)."""
    return await session.scalar(
        select(func.max(NodeCertificate.created_at)).where(
            NodeCertificate.node_id == node_id, NodeCertificate.token_id == ""
        )
    )


async def certificate(session: AsyncSession, serial: str) -> NodeCertificate | None:
    return await session.get(NodeCertificate, serial)


async def fill_certificate_pem(session: AsyncSession, serial: str, pem: str) -> bool:
    """Store ``pem`` for a certificate recorded without one (issued before migration 0015);
    whether a row changed (a row that has its PEM is never overwritten)."""
    result = await session.execute(
        update(NodeCertificate)
        .where(NodeCertificate.serial == serial, NodeCertificate.certificate_pem == "")
        .values(certificate_pem=pem)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def revoke(session: AsyncSession, node_id: str, at: datetime) -> int:
    """Revoke every unrevoked certificate of ``node_id``; returns how many."""
    result = await session.execute(
        update(NodeCertificate)
        .where(NodeCertificate.node_id == node_id, NodeCertificate.revoked_at.is_(None))
        .values(revoked_at=at)
        .returning(NodeCertificate.serial)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())


async def has_certificates(session: AsyncSession, node_id: str) -> bool:
    found = await session.scalar(
        select(NodeCertificate.serial).where(NodeCertificate.node_id == node_id).limit(1)
    )
    return found is not None


class CertificateSummary(NamedTuple):
    """A node's certificates as `node list` shows them."""

    not_after: datetime
    """Expiry of its newest certificate."""
    revoked: bool
    """Every certificate of the node is revoked."""
    group: str
    mode: str
    site: str
    """Of its newest certificate: what it was enrolled (or renewed) as."""


async def newest_certificates(session: AsyncSession) -> dict[str, CertificateSummary]:
    """Per node id that holds any certificate: its newest certificate and whether all are revoked."""
    grouped = await session.execute(
        select(NodeCertificate.node_id, func.bool_and(NodeCertificate.revoked_at.is_not(None))).group_by(
            NodeCertificate.node_id
        )
    )
    revoked: dict[str, bool] = {node_id: bool(all_revoked) for node_id, all_revoked in grouped}
    # Newest by when it was issued (the database's clock), not by ``not_before``: how far a
    # certificate is backdated changed (a minute, then up to an hour), so a certificate
    # issued after an upgrade can start before one issued just before it.
    newest = await session.execute(
        select(
            NodeCertificate.node_id,
            NodeCertificate.not_after,
            NodeCertificate.node_group,
            NodeCertificate.mode,
            NodeCertificate.site,
        )
        .ext(distinct_on(NodeCertificate.node_id))
        .order_by(
            NodeCertificate.node_id,
            NodeCertificate.created_at.desc(),
            NodeCertificate.not_before.desc(),
            NodeCertificate.not_after.desc(),
        )
    )
    return {
        node_id: CertificateSummary(not_after, bool(revoked.get(node_id)), group, mode, site)
        for node_id, not_after, group, mode, site in newest
    }


async def announce_revocation(session: AsyncSession, node_id: str) -> None:
    """NOTIFY every replica that ``node_id`` is revoked; delivered when the transaction commits."""
    await session.execute(text("SELECT pg_notify(:c, :v)"), {"c": REVOKE_CHANNEL, "v": node_id})


async def listen(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(f"LISTEN {REVOKE_CHANNEL}")


async def revoked_since(conn: psycopg.AsyncConnection[Any], since: datetime) -> list[str]:
    """The node ids with a certificate revoked at ``since`` or later (on the listening
    connection: what a replica missed while it was not listening)."""
    cursor = await conn.execute(
        "SELECT DISTINCT node_id FROM node_certificates WHERE revoked_at >= %s", (since,)
    )
    return [str(row[0]) for row in await cursor.fetchall()]
