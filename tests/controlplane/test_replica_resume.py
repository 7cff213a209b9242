"""Two control-plane replicas on one database: a node moves between them without a resend."""

from __future__ import annotations

import hashlib
from pathlib import Path

from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin, SyncNode
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane
from tests.helpers import eventually


async def test_a_current_node_reconnecting_to_the_other_replica_is_not_sent_its_version_again(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Replica A serves the node its snapshot; the node ACKs, drops, and reconnects to
    replica B saying what it serves. B must not resend that version: the first envelope
    B sends is the next change (made through A), which proves both the resume and the
    cross-replica push."""
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="before"))
    tls = await control_plane.enroll("mover", private_tmp / "mover")
    on_a = await SyncNode(control_plane, "mover", tls).connect()
    try:
        current = await on_a.next_envelope()
        snapshot = on_a.verified(current)
        on_a.ack(current, snapshot.version)

        async def acked() -> bool:
            listed = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
            return any(n.node_id == "mover" and n.applied_version == snapshot.version for n in listed)

        await eventually(acked, message="replica A to record the ACK")
    finally:
        await on_a.close()

    settings = cp_settings(control_plane.database_url, private_tmp, kek_file=control_plane.data_dir / "kek")
    async with running_control_plane(settings) as replica_b:
        on_b = await SyncNode(
            replica_b,
            "mover",
            tls,
            applied_version=snapshot.version,
            applied_hash=hashlib.sha256(current.payload).digest(),
        ).connect()
        try:
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="after"))
            pushed = on_b.verified(await on_b.next_envelope())
            assert pushed.version == snapshot.version + 1, "replica B resent the version the node already had"
            assert sorted(t.name for t in pushed.tenants) == ["after", "before"]
            assert on_b.received.empty()
        finally:
            await on_b.close()
