"""The broker's debounced reload never loses a change notified while it is reading, and
wakes only the streams of the group whose newest version moved."""

from __future__ import annotations

import asyncio

from controlplane.snapshots.broker import SnapshotBroker
from signalbox.api.admin.v1 import admin_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually


async def test_a_change_notified_during_a_reload_gets_a_reload_of_its_own() -> None:
    broker = SnapshotBroker(sessions=None, listen_url="", debounce=0.0)  # type: ignore[arg-type]
    reading = asyncio.Event()
    release = asyncio.Event()
    reloads = 0

    async def refresh() -> None:
        # The first reload's read is in flight when the next change is notified: what it
        # reads may predate that change.
        nonlocal reloads
        reloads += 1
        if reloads == 1:
            reading.set()
            await release.wait()

    broker.refresh = refresh  # type: ignore[method-assign]
    broker.kick()
    await asyncio.wait_for(reading.wait(), 5)
    broker.kick()  # notified mid-read
    release.set()

    def reloaded_twice() -> bool:
        return reloads == 2

    await eventually(reloaded_twice, message="a second reload after the mid-read notification")
    pending = broker._pending
    assert pending is not None
    await asyncio.wait_for(pending, 5)
    assert reloads == 2, "a burst of notifications still costs one reload, not one each"


async def test_a_new_version_wakes_only_the_streams_of_its_group(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    broker = control_plane.cp.broker
    assert broker is not None
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="x"))
    await admin.CreateNodeGroup(
        admin_pb2.CreateNodeGroupRequest(
            group=admin_pb2.NodeGroup(name="vault", tenants=admin_pb2.Selection(names=["x"]))
        )
    )

    def holds(group: str, version: int) -> bool:
        latest = broker.latest_for(group)
        return latest is not None and latest.version == version

    await eventually(lambda: holds("vault", 1), message="the broker to hold vault v1")
    # The reload that took vault v1 may still be loading other groups; its wake-up of vault's
    # streams comes at its end and must not be taken for the next version's.
    await eventually(
        lambda: broker._pending is None or broker._pending.done(), message="the reload to finish"
    )
    default_sub, vault_sub = broker.subscribe("d-1", "default"), broker.subscribe("v-1", "vault")
    try:
        default_v = await admin.latest_version()
        # Only vault's content changes: only vault's stream is woken.
        await admin.UpdateNodeGroup(admin_pb2.UpdateNodeGroupRequest(name="vault", deployment="eu"))
        assert await asyncio.wait_for(vault_sub.queue.get(), 5) is None
        assert holds("vault", 2)
        # Only default's: a tenant vault does not see.
        await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="y"))
        assert await asyncio.wait_for(default_sub.queue.get(), 5) is None
        assert holds("default", default_v + 1)
        assert default_sub.queue.empty()
        assert vault_sub.queue.empty()
        assert holds("vault", 2)
    finally:
        broker.unsubscribe(default_sub)
        broker.unsubscribe(vault_sub)
