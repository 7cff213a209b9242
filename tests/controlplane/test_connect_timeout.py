"""A database host that accepts a connection and never answers (packets dropped after a
failover, a firewall, a hung server) fails a new connection after ``CONNECT_TIMEOUT``
seconds, as UNAVAILABLE for the caller, instead of holding the call for minutes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.api.status import status_for
from controlplane.db.failures import DATABASE_UNAVAILABLE
from controlplane.db.session import CONNECT_TIMEOUT, create_engine


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A URL whose server takes the TCP connection and never says a word."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield f"postgresql://signalbox@127.0.0.1:{server.getsockname()[1]}/signalbox"


async def test_a_new_connection_to_a_silent_database_fails_within_the_connect_timeout(
    silent_database: str,
) -> None:
    engine = create_engine(silent_database)
    started = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError) as failed:
            await asyncio.wait_for(_connect(engine), CONNECT_TIMEOUT + 10)
    finally:
        await engine.dispose()
    assert time.monotonic() - started < CONNECT_TIMEOUT + 5
    assert status_for(failed.value) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)


async def test_a_connect_timeout_the_url_names_is_kept(silent_database: str) -> None:
    engine = create_engine(f"{silent_database}?connect_timeout=1")
    started = time.monotonic()
    try:
        with pytest.raises(sa.exc.OperationalError):
            await _connect(engine)
    finally:
        await engine.dispose()
    assert time.monotonic() - started < CONNECT_TIMEOUT / 2


async def _connect(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))
