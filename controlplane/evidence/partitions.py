"""The monthly partitions of ``evidence_records``: made ahead of the records that need them.

Each is created in a short transaction of its own (it takes a strong lock on the parent),
serialized across replicas by an advisory lock, with the same append-only protection as
the tables of migration 0012: UPDATE, DELETE and TRUNCATE revoked, a TRUNCATE trigger.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import EVIDENCE_PARTITION_PREFIX

LOCK = "SELECT pg_advisory_xact_lock(hashtext('evidence_partitions'))"
"""Taken by whoever creates or drops partitions, for the rest of its transaction."""
SHARED_LOCK = "SELECT pg_advisory_xact_lock_shared(hashtext('evidence_partitions'))"
"""Taken by an ingest transaction storing records of a past month: retention cannot drop a
partition between the check that it exists and the COPY into it."""


MONTHS_AHEAD = 1
"""Partitions are made for months up to this many after the current one (a node's clock a
little ahead, a record written at the turn of a month). A record dated more than a day
after its receipt is stored at its receipt (``controlplane.evidence.records.MAX_AHEAD_S``);
one that still falls later lands in the DEFAULT partition: a partition per distinct month up to the
year 9998 is what a single batch of 10,000 records could otherwise make (a CREATE TABLE
each, under the partitions' lock, and a catalog every query on the records plans over)."""


class PartitionGone(Exception):
    """A past month's partition an ingest transaction needs was dropped (by retention) after
    ``ensure``: roll back, make it again and retry, so the records never land in DEFAULT."""


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """``[start, end)`` of a calendar month in UTC."""
    return datetime(year, month, 1, tzinfo=UTC), datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def partition_name(year: int, month: int) -> str:
    return f"{EVIDENCE_PARTITION_PREFIX}y{year:04d}m{month:02d}"


class Partitions:
    """Knows which monthly partitions exist; one per ingest."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, lock_timeout: float = 10.0) -> None:
        """``lock_timeout``: seconds making a partition waits for a lock (``ensure``), as
        long as an ingest transaction does for its own (the ``evidence_lock_timeout``
        setting): making one locks ``evidence_records`` itself, which waits behind any open
        reader of it (an export), and it holds the partitions' advisory lock meanwhile, which
        every batch of a past month then waits for. Without a bound that stalled ingest for
        as long as the reader ran; past it the batch is refused UNAVAILABLE and resent."""
        self._sessions = sessions
        self._lock_timeout = f"{max(1, round(lock_timeout * 1000))}ms"
        self._known: set[str] = set()
        """Monthly partitions known to exist (or whose month the DEFAULT partition keeps)."""
        self._in_default: set[str] = set()
        """Months whose records the DEFAULT partition keeps (no partition can be made)."""

    def forget(self, name: str) -> None:
        """``name`` was dropped: a late record of its month makes it again."""
        self._known.discard(name)

    async def hold(self, session: AsyncSession, times: Iterable[datetime]) -> None:
        """In the ingest transaction ``session``: when ``times`` include a past month, take the
        shared lock and check that its partition is there (``PartitionGone`` otherwise). This
        month and later ones retention never drops: nothing to do for them."""
        now = datetime.now(UTC)
        past = sorted(
            {partition_name(t.year, t.month) for t in times if (t.year, t.month) < (now.year, now.month)}
        )
        past = [name for name in past if name not in self._in_default]
        if not past:
            return
        await session.execute(sa.text(SHARED_LOCK))
        missing = (
            await session.execute(
                sa.text("SELECT n FROM unnest(CAST(:names AS text[])) AS n WHERE to_regclass(n) IS NULL"),
                {"names": past},
            )
        ).all()
        if missing:
            for (name,) in missing:
                self.forget(name)
            raise PartitionGone(", ".join(name for (name,) in missing))

    async def ensure(self, times: Iterable[datetime]) -> None:
        """Monthly partitions for ``times``: once per month per process for this month and
        later ones; a past month's is looked up each time. Retention (of any replica) drops
        only months that have ended: a past month's partition known here may be gone, and a
        late record of it would then land in DEFAULT, which retention cannot prune."""
        months = {(t.year, t.month) for t in times}
        now = datetime.now(UTC)
        ahead = now.month - 1 + MONTHS_AHEAD
        horizon = (now.year + ahead // 12, ahead % 12 + 1)
        for year, month in sorted(months):
            if (year, month) > horizon:
                continue  # DEFAULT keeps it (see MONTHS_AHEAD)
            name = partition_name(year, month)
            if name in self._known and (year, month) >= (now.year, now.month):
                continue
            start, end = month_bounds(year, month)
            async with self._sessions() as session, session.begin():
                await session.execute(
                    sa.text("SELECT set_config('lock_timeout', :t, true)"), {"t": self._lock_timeout}
                )
                await session.execute(sa.text(LOCK))
                exists = (await session.execute(sa.text("SELECT to_regclass(:n)"), {"n": name})).scalar()
                if exists is not None:
                    self._in_default.discard(name)
                elif await _in_default(session, start, end):
                    # Records of that month already in DEFAULT would make the new partition's
                    # constraint fail: they stay there until retention rehomes them.
                    self._in_default.add(name)
                else:
                    self._in_default.discard(name)
                    await _create(session, name, start, end)
            self._known.add(name)

    async def rehome_default(self, session: AsyncSession, before: datetime) -> list[str]:
        """In retention's transaction (``LOCK`` held): move the DEFAULT partition's records of
        every month that ends at or before ``before`` into monthly partitions of their own,
        so retention can drop them like any other month. Without UPDATE or DELETE: DEFAULT is
        detached and renamed, a new empty DEFAULT attached, the months' partitions made, the
        records inserted again through the parent (each lands in its month's partition, or
        in the new DEFAULT), and the old one dropped. Returns the partitions made."""
        rows = await session.execute(
            sa.text(
                "SELECT DISTINCT EXTRACT(YEAR FROM ts AT TIME ZONE 'UTC')::int, "
                "EXTRACT(MONTH FROM ts AT TIME ZONE 'UTC')::int FROM evidence_records_default WHERE ts < :b"
            ),
            {"b": before},
        )
        months = sorted((int(y), int(m)) for y, m in rows if month_bounds(int(y), int(m))[1] <= before)
        if not months:
            return []
        await session.execute(sa.text(f"ALTER TABLE evidence_records DETACH PARTITION {DEFAULT}"))
        await session.execute(sa.text(f"ALTER TABLE {DEFAULT} RENAME TO {REHOMED}"))
        await session.execute(sa.text(f"CREATE TABLE {DEFAULT} PARTITION OF evidence_records DEFAULT"))
        await _protect(session, DEFAULT)
        made = []
        for year, month in months:
            name = partition_name(year, month)
            await _create(session, name, *month_bounds(year, month))
            self._in_default.discard(name)
            self._known.add(name)
            made.append(name)
        await session.execute(sa.text(f"INSERT INTO evidence_records SELECT * FROM {REHOMED}"))
        await session.execute(sa.text(f"DROP TABLE {REHOMED}"))
        return made


DEFAULT = "evidence_records_default"
REHOMED = "evidence_records_default_rehomed"


async def _in_default(session: AsyncSession, start: datetime, end: datetime) -> bool:
    found = await session.execute(
        sa.text(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE ts >= :a AND ts < :b)"), {"a": start, "b": end}
    )
    return bool(found.scalar())


async def _create(session: AsyncSession, name: str, start: datetime, end: datetime) -> None:
    """The monthly partition ``name`` for ``[start, end)``, append-only like its parent."""
    await session.execute(
        sa.text(
            f"CREATE TABLE {name} PARTITION OF evidence_records "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    await _protect(session, name)


async def _protect(session: AsyncSession, name: str) -> None:
    """What migration 0012 does to every evidence table: no UPDATE, DELETE or TRUNCATE for
    anyone (the row triggers are the parent's, cloned onto each partition), and a TRUNCATE
    trigger, since statement triggers are not cloned."""
    await session.execute(sa.text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {name} FROM PUBLIC, CURRENT_USER"))
    await session.execute(
        sa.text(
            f"CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name} "
            "FOR EACH STATEMENT EXECUTE FUNCTION evidence_append_only()"
        )
    )
