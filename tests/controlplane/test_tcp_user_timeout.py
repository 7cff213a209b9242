"""A query in flight on a database connection whose peer vanished without a reset (a
partition, a dead database host) fails within ``TCP_USER_TIMEOUT`` instead of waiting for
TCP to give up retransmitting (about 15 minutes), holding the call and its pooled connection:
keepalives only probe a connection with nothing unacknowledged on it."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.api.status import status_for
from controlplane.db import session
from controlplane.db.failures import DATABASE_UNAVAILABLE
from controlplane.db.session import TCP_USER_TIMEOUT, create_engine
from tests.fixtures.postgres import RunningControlPlane
from tests.fixtures.proxy import freezable_proxy


async def _tcp_user_timeout(engine: AsyncEngine) -> int:
    """The ``TCP_USER_TIMEOUT`` of the socket of a connection ``engine`` makes."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        fd = raw.driver_connection.pgconn.socket  # type: ignore[union-attr]
        with socket.socket(fileno=os.dup(fd)) as sock:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)


async def test_every_database_connection_has_a_bounded_tcp_user_timeout(
    control_plane: RunningControlPlane,
) -> None:
    async with freezable_proxy(control_plane.database_url) as proxy:
        engine = create_engine(proxy.url())
        try:
            assert await _tcp_user_timeout(engine) == TCP_USER_TIMEOUT
        finally:
            await engine.dispose()
    assert 0 < TCP_USER_TIMEOUT <= 120_000


async def test_a_tcp_user_timeout_the_url_names_is_kept(control_plane: RunningControlPlane) -> None:
    async with freezable_proxy(control_plane.database_url) as proxy:
        url = proxy.url()
        engine = create_engine(f"{url}{'&' if '?' in url else '?'}tcp_user_timeout=4321")
        try:
            assert await _tcp_user_timeout(engine) == 4321
        finally:
            await engine.dispose()


async def test_a_query_on_a_frozen_connection_fails_within_the_tcp_user_timeout(
    control_plane: RunningControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "TCP_USER_TIMEOUT", 1000)  # a test cannot wait a minute
    async with freezable_proxy(control_plane.database_url, receive_buffer=4096) as proxy:
        engine = create_engine(proxy.url())
        try:
            async with engine.connect() as connection:
                assert (await connection.execute(sa.text("SELECT 1"))).scalar_one() == 1
                proxy.freeze()  # the peer now takes nothing more and stays open
                started = time.monotonic()
                with pytest.raises(sa.exc.OperationalError) as failed:
                    async with asyncio.timeout(30):
                        # More than the socket buffers on both sides hold: still being sent
                        # when the peer stops taking it, as a query to a vanished host is.
                        await connection.execute(sa.text("SELECT length(:p)"), {"p": "x" * (16 << 20)})
                elapsed = time.monotonic() - started
        finally:
            await engine.dispose()
    assert elapsed < 10, elapsed
    assert status_for(failed.value) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
