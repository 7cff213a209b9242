"""Engine and session factory (SQLAlchemy asyncio over psycopg 3)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import QueuePool

from signalbox.wallclock import elapsed

log = logging.getLogger("signalbox.controlplane.db")

SessionFactory = async_sessionmaker[AsyncSession]


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError("database URL: must be a postgresql:// URL")


CONNECT_TIMEOUT = 10
"""Seconds a new database connection may take to be made (libpq ``connect_timeout``) unless
the URL names its own: without one, a database host that drops packets (cut off, failed
over, a firewall) held every call that needed a new connection for as long as the
operating system retries a TCP connect, minutes, instead of refusing it UNAVAILABLE."""


KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
"""TCP keepalives on every database connection (libpq's; ignored over a Unix socket): after
30 s without a byte, a probe every 10 s, and the connection is dropped after 3 unanswered,
about a minute after its peer vanished. Without them a connection whose peer vanished
without a reset (a partition, a dead database host) stays open for as long as nothing is
sent on it: the snapshot listener, which only waits, waited forever and missed every change."""


TCP_USER_TIMEOUT = 60_000
"""Milliseconds data sent on a database connection may stay unacknowledged before the
connection is dropped (libpq ``tcp_user_timeout``; ignored over a Unix socket). Keepalives
only probe an idle connection: one with a query in flight on it whose peer vanished without
a reset retransmits for as long as the operating system retries (``tcp_retries2``: about 15
minutes), holding the call and its pooled connection. A server busy with a slow query still
acknowledges what it was sent, so this bounds only a dead peer, never a long query."""


def connect_options(url: str) -> dict[str, int]:
    """Connection keywords for ``url``: ``CONNECT_TIMEOUT``, ``KEEPALIVES`` and
    ``TCP_USER_TIMEOUT``, each unless the URL sets it."""
    query = url.partition("?")[2]
    named = {part.partition("=")[0] for part in query.split("&") if part}
    options = {"connect_timeout": CONNECT_TIMEOUT, **KEEPALIVES, "tcp_user_timeout": TCP_USER_TIMEOUT}
    return {key: value for key, value in options.items() if key not in named}


def create_engine(url: str) -> AsyncEngine:
    """An async engine; connections are checked before use so a restarted server is survived,
    and a new one that cannot be made in ``CONNECT_TIMEOUT`` seconds fails rather than waits."""
    url = normalize_url(url)
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=connect_options(url)
    )


def session_factory(engine: AsyncEngine) -> SessionFactory:
    # expire_on_commit=False: services return ORM rows after their transaction ends.
    return async_sessionmaker(engine, expire_on_commit=False)


async def dispose(engine: AsyncEngine, within: float) -> None:
    """Close ``engine``'s connections once those still in use are back, waiting up to ``within``
    seconds for them.

    A session whose task was cancelled (a call cut off by the server's stop) closes in a
    shielded task of its own, so its connection can come back after everything else has
    stopped. A connection returned after the dispose goes back to the pool the dispose
    replaced, where nothing ever closes it."""
    pool = engine.pool
    if not isinstance(pool, QueuePool) or not pool.checkedout():
        await engine.dispose()
        return
    log.info("stopping: waiting up to %.1f s for %d database connection(s) in use", within, pool.checkedout())
    returned = asyncio.Event()

    def checkin(*_: object) -> None:
        returned.set()

    event.listen(pool, "checkin", checkin)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while pool.checkedout():
                    returned.clear()
                    await returned.wait()
    finally:
        event.remove(pool, "checkin", checkin)
    if pool.checkedout():
        log.warning(
            "stopping with %d database connection(s) still in use; they close when the process ends",
            pool.checkedout(),
        )
    await engine.dispose()


MAX_CLOCK_GAP = timedelta(minutes=1)
"""How far this host's clock may be off the database's before it is logged."""
CLOCK_WARNING_EVERY = 600.0
"""Seconds between two warnings of a host clock off the database's, per thing dated."""
_clock_warned: dict[str, float] = {}


async def database_now(
    session: AsyncSession, host_clock: Callable[[], datetime] | None = None, dated: str = ""
) -> datetime:
    """The database's clock (its transaction's start): the one time every replica agrees on.
    With ``host_clock``, a host clock more than ``MAX_CLOCK_GAP`` off it is logged, naming
    what is ``dated`` by the database's instead."""
    now: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
    if host_clock is not None:
        compare_host_clock(now, host_clock, dated)
    return now


def compare_host_clock(database: datetime, host_clock: Callable[[], datetime], dated: str) -> None:
    """Log (at most every ``CLOCK_WARNING_EVERY`` per ``dated``) a host clock more than
    ``MAX_CLOCK_GAP`` off the database's ``database`` now."""
    gap = (host_clock() - database).total_seconds()
    last = _clock_warned.get(dated)
    if abs(gap) > MAX_CLOCK_GAP.total_seconds() and (
        last is None or time.monotonic() - last >= CLOCK_WARNING_EVERY
    ):
        _clock_warned[dated] = time.monotonic()
        log.warning(
            "this host's clock is %+.0f s off the database's; %s are dated by the database's", gap, dated
        )


class DatabaseClock:
    """The database's clock without a round trip per reading: its ``now()`` at an anchor plus
    the time elapsed since on ``signalbox.wallclock.elapsed`` (which no step of this host's
    wall clock moves), anchored again every ``refresh`` seconds. For dating something on a hot
    path (an evidence batch's receipt) as every replica would, whatever this host's clock reads."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        host_clock: Callable[[], datetime],
        dated: str,
        refresh: float = 60.0,
    ) -> None:
        """``host_clock``: this host's, only compared with the database's (``database_now``),
        naming what is ``dated``."""
        self._sessions = sessions
        self._host_clock = host_clock
        self._dated = dated
        self._refresh = refresh
        self._anchor: tuple[datetime, float] | None = None

    async def now(self, *, stale_ok: bool = False) -> datetime:
        """The database's clock now. ``stale_ok``: when anchoring again fails (the database is
        down) and an anchor is held, go on from that one rather than raise: the time elapsed
        since is still measured, only a step of the database's own clock is missed."""
        if self._anchor is None or elapsed() - self._anchor[1] >= self._refresh:
            try:
                async with self._sessions() as session:
                    at = elapsed()
                    self._anchor = (await database_now(session, self._host_clock, self._dated), at)
            except Exception as exc:
                if not stale_ok or self._anchor is None:
                    raise
                log.debug("the database's clock for %s not read again (%s)", self._dated, exc)
        database, at = self._anchor
        return database + timedelta(seconds=elapsed() - at)
