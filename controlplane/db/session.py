"""Engine and session factory (SQLAlchemy asyncio over psycopg 3)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SessionFactory = async_sessionmaker[AsyncSession]


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError("database URL: must be a postgresql:// URL")


def create_engine(url: str) -> AsyncEngine:
    """An async engine; connections are checked before use so a restarted server is survived."""
    return create_async_engine(normalize_url(url), pool_pre_ping=True, pool_size=10, max_overflow=10)


def session_factory(engine: AsyncEngine) -> SessionFactory:
    # expire_on_commit=False: services return ORM rows after their transaction ends.
    return async_sessionmaker(engine, expire_on_commit=False)
