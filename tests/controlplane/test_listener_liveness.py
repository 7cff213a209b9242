"""The snapshot listener's connection going half-open (its peer gone without a reset: a
partition, a dead database host) is found out and replaced: nodes do not keep a stale
config because the replica waits forever on a connection that will never carry a NOTIFY."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from controlplane.db.session import KEEPALIVES, create_engine, session_factory
from controlplane.snapshots.broker import SnapshotBroker, listen_conninfo
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.fixtures.proxy import freezable_proxy
from tests.helpers import eventually


@asynccontextmanager
async def _replica_broker(database_url: str, listen_url: str) -> AsyncIterator[SnapshotBroker]:
    """Another replica's broker: its sessions straight to the database, its listening
    connection to ``listen_url``; probed after 0.2 s of silence."""
    engine = create_engine(database_url)
    broker = SnapshotBroker(
        session_factory(engine),
        listen_url,
        debounce=0.0,
        reconnect_backoff=0.05,
        probe_interval=0.2,
        probe_timeout=0.5,
    )
    try:
        await broker.start()
        yield broker
    finally:
        await broker.close()
        await engine.dispose()


async def test_a_frozen_listening_connection_is_replaced_and_the_missed_snapshot_loaded(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    async with (
        freezable_proxy(control_plane.database_url) as proxy,
        _replica_broker(control_plane.database_url, proxy.url()) as broker,
    ):
        held = broker.latest_for("default")
        assert held is not None
        sub = broker.subscribe("frozen-1")
        proxy.freeze()  # the listening connection now carries nothing, and stays open
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="while-frozen"))
        published = await admin.latest_version()
        assert published == held.version + 1

        def caught_up() -> bool:
            latest = broker.latest_for("default")
            return latest is not None and latest.version == published

        await eventually(caught_up, message="the replica to load the version notified while frozen")
        assert proxy.accepted >= 2, "a new listening connection was made"
        # The refresh wakes the streams of every moved group once it has loaded them all: it
        # may still be loading another group's envelope when this one's is held.
        await eventually(lambda: not sub.queue.empty(), message="the group's streams to be woken")
        assert sub.queue.get_nowait() is None, "the group's streams were woken"


async def test_the_listening_connection_has_bounded_tcp_keepalives(
    control_plane: RunningControlPlane,
) -> None:
    async with (
        freezable_proxy(control_plane.database_url) as proxy,
        await psycopg.AsyncConnection.connect(listen_conninfo(proxy.url()), autocommit=True) as conn,
    ):
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            options = {
                "keepalives": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "keepalives_idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "keepalives_interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "keepalives_count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            }
    assert options == KEEPALIVES
    assert (
        KEEPALIVES["keepalives_idle"] + KEEPALIVES["keepalives_interval"] * KEEPALIVES["keepalives_count"]
        <= 120
    )
