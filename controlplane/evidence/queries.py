"""What admins ask the evidence store: records by filter, and the state of every chain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import EvidenceAlarm, EvidenceChain, EvidenceCheckpoint, EvidenceRecord
from controlplane.errors import InvalidArgument
from controlplane.evidence.usage import UsageReports

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class EvidenceFilter:
    """Each set field narrows the result (AND); times are ``since <= ts < until``."""

    correlation_id: str = ""
    tenant_id: str = ""
    api_key_id: str = ""
    model: str = ""
    outcome: str = ""
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 0


DEFAULT_STALE_AFTER = 600.0


@dataclass(frozen=True, slots=True)
class ChainStatus:
    chain: EvidenceChain
    alarms: int
    stale: bool = False
    """No batch for longer than ``stale_after``: the node stopped shipping this chain."""
    proven: int = 0
    """Size of the largest checkpoint stored with a matching root (0: none)."""


class EvidenceQueries:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, stale_after: float = DEFAULT_STALE_AFTER
    ) -> None:
        """``stale_after``: seconds without a batch after which a chain is shown stale."""
        self._sessions = sessions
        self._stale_after = stale_after
        self.usage = UsageReports(sessions)

    async def records(self, f: EvidenceFilter) -> tuple[list[EvidenceRecord], bool]:
        """The newest matching records (at most the limit) and whether more matched."""
        query, limit = records_query(f)
        async with self._sessions() as session:
            rows = list((await session.execute(query)).scalars())
        return rows[:limit], len(rows) > limit

    async def chains(self) -> list[ChainStatus]:
        alarms = (
            sa.select(EvidenceAlarm.chain_id, sa.func.count().label("n"))
            .group_by(EvidenceAlarm.chain_id)
            .subquery()
        )
        # The database's clock, as ``last_received_at`` is the database's ``now()``.
        stale = sa.func.coalesce(EvidenceChain.last_received_at, EvidenceChain.created_at) < (
            sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, self._stale_after)
        )
        # Per chain, a backward scan of its (chain_id, tree_size) index: a chain signs a
        # checkpoint a second, far too many to group them all.
        proven = (
            sa.select(sa.func.max(EvidenceCheckpoint.tree_size))
            .where(EvidenceCheckpoint.chain_id == EvidenceChain.chain_id, EvidenceCheckpoint.root_matches)
            .scalar_subquery()
        )
        query = (
            sa.select(EvidenceChain, sa.func.coalesce(alarms.c.n, 0), stale, sa.func.coalesce(proven, 0))
            .outerjoin(alarms, alarms.c.chain_id == EvidenceChain.chain_id)
            .order_by(EvidenceChain.chain_id)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [ChainStatus(chain, int(n), bool(old), int(size)) for chain, n, old, size in rows]


async def chain_head(sessions: async_sessionmaker[AsyncSession], chain_id: str) -> int:
    """The highest seq of ``chain_id`` stored with every seq before it (0: none)."""
    async with sessions() as session:
        head = await session.scalar(
            sa.select(EvidenceChain.head_seq).where(EvidenceChain.chain_id == chain_id)
        )
    return int(head or 0)


def records_query(f: EvidenceFilter) -> tuple[sa.Select[EvidenceRecord], int]:
    """The query of ``EvidenceQueries.records`` (one row more than the limit, to tell whether
    more matched) and the limit. Each filter has its index (tests/controlplane/evidence/
    test_query_plans.py reads the plans)."""
    limit = f.limit or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise InvalidArgument("limit", f"at most {MAX_LIMIT}")
    if f.since is not None and f.until is not None and f.since >= f.until:
        raise InvalidArgument("until", "must be after since")
    query = sa.select(EvidenceRecord)
    for column, value in (
        (EvidenceRecord.correlation_id, f.correlation_id),
        (EvidenceRecord.tenant_id, f.tenant_id),
        (EvidenceRecord.api_key_id, f.api_key_id),
        (EvidenceRecord.model, f.model),
        (EvidenceRecord.outcome, f.outcome),
    ):
        if value:
            query = query.where(column == value)
    if f.since is not None:
        query = query.where(EvidenceRecord.ts >= f.since)
    if f.until is not None:
        query = query.where(EvidenceRecord.ts < f.until)
    query = query.order_by(EvidenceRecord.ts.desc(), EvidenceRecord.chain_id, EvidenceRecord.seq.desc())
    return query.limit(limit + 1), limit
