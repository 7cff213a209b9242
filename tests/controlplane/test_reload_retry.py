"""A replica that is told of a new snapshot (NOTIFY) while the database refuses it a
connection reloads it once the database lets it: the change reaches its nodes without
waiting for the next one."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.controlplane.conftest import Admin, SyncNode
from tests.fixtures.postgres import (
    RunningControlPlane,
    cp_settings,
    running_control_plane,
    sql_execute,
    sql_rows,
)
from tests.helpers import eventually


def _backends(database_url: str) -> list[tuple[int, str]]:
    """(pid, last query) of every other session on the database."""
    database = make_url(database_url).database
    rows = sql_rows(
        database_url,
        f"SELECT pid, query FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()",
    )
    return [(int(pid), str(query)) for pid, query in rows]


def _server_execute(database_url: str, sql: str) -> None:
    """``sql`` on the server's ``postgres`` database (the test's own may refuse connections)."""
    sql_execute(make_url(database_url).set(database="postgres").render_as_string(hide_password=False), sql)


async def test_a_change_notified_while_the_database_refuses_connections_is_reloaded_after(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls = await control_plane.enroll("edge", private_tmp / "edge")
    node = await SyncNode(control_plane, "edge", tls).connect()
    try:
        current = node.verified(await node.next_envelope())
        # Replica A's sessions now: its pooled connections and its listening one.
        replica_a = _backends(control_plane.database_url)
        settings = cp_settings(
            control_plane.database_url, private_tmp, kek_file=control_plane.data_dir / "kek"
        )
        async with (
            running_control_plane(settings) as replica_b,
            grpc.aio.insecure_channel(replica_b.address) as channel,
        ):
            admin_b = Admin(admin_pb2_grpc.AdminServiceStub(channel), replica_b.metadata)
            await admin_b.ListNodes(admin_pb2.ListNodesRequest())  # B's pool holds a connection
            # A loses its pooled connections and cannot open new ones; its listening
            # connection lives on, and B works on the connections it holds.
            database = make_url(control_plane.database_url).database
            _server_execute(control_plane.database_url, f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            try:
                pooled = ", ".join(str(pid) for pid, query in replica_a if not query.startswith("LISTEN"))
                _server_execute(
                    control_plane.database_url,
                    f"SELECT pg_terminate_backend(p) FROM unnest(ARRAY[{pooled}]) p",
                )
                with caplog.at_level(logging.WARNING, logger="controlplane.snapshots.broker"):
                    await admin_b.CreateTenant(admin_pb2.CreateTenantRequest(name="during"))
                    await eventually(
                        lambda: "could not reload the newest snapshots" in caplog.text,
                        message="replica A to try the reload B's change notified",
                    )
            finally:
                _server_execute(
                    control_plane.database_url, f"ALTER DATABASE {database} ALLOW_CONNECTIONS true"
                )
            pushed = node.verified(await node.next_envelope(timeout=15))
            assert pushed.version == current.version + 1
            assert "during" in [t.name for t in pushed.tenants]
    finally:
        await node.close()
