"""A node's sync stream is not taken at its word: what it ACKs is recorded only when this
control plane published it for the node's group, and what it sends in a loop costs no
database write (or memory) each."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from sqlalchemy import event

from controlplane.api.sync_state import ANSWERS_PER_SECOND
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import sync_pb2, sync_pb2_grpc
from signalbox.tls import aio_channel
from tests.controlplane.conftest import Admin, SyncNode
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually

CLOUD = common_pb2.DEPLOYMENT_MODE_CLOUD


async def _listed(admin: Admin, node_id: str) -> admin_pb2.Node:
    (node,) = [n for n in (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes if n.node_id == node_id]
    return node


async def test_an_ack_of_a_version_never_published_is_refused_and_not_recorded(
    admin: Admin, sync_nodes: object
) -> None:
    """An ACK of any (version, hash) was recorded as what the node runs: a node ACKing a
    version far ahead was listed current (lag 0) while it ran nothing this control plane
    signed, and its own stream stopped sending it snapshots."""
    node: SyncNode = await sync_nodes("liar-1")  # type: ignore[operator]
    envelope = await node.next_envelope()
    version = node.verified(envelope).version
    made_up = sync_pb2.Ack(version=version + 1000, payload_sha256=hashlib.sha256(b"made up").digest())
    node.outbox.put_nowait(sync_pb2.NodeMessage(ack=made_up))
    await eventually(node.ended.is_set, message="the stream ended")
    assert node.end_code == grpc.StatusCode.INVALID_ARGUMENT
    assert await node.call.details() == (
        f"ack: v{version + 1000} with that payload_sha256 was never published for node group 'default'"
    )
    listed = await _listed(admin, "liar-1")
    assert (listed.applied_version, listed.last_ack_version, listed.lag) == (0, 0, version)

    # The real version, with another payload's hash: refused as well.
    again: SyncNode = await sync_nodes("liar-1")  # type: ignore[operator]
    envelope = await again.next_envelope()
    again.outbox.put_nowait(
        sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=version, payload_sha256=made_up.payload_sha256))
    )
    await eventually(again.ended.is_set, message="the second stream ended")
    assert again.end_code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await _listed(admin, "liar-1")).applied_version == 0

    # What it was sent is recorded.
    honest: SyncNode = await sync_nodes("liar-1")  # type: ignore[operator]
    envelope = await honest.next_envelope()
    honest.ack(envelope, version)

    async def recorded() -> bool:
        return (await _listed(admin, "liar-1")).applied_version == version

    await eventually(recorded, message="the real ACK recorded")
    assert not honest.ended.is_set()


async def test_heartbeats_in_a_loop_are_not_a_database_write_each(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    engine = control_plane.cp._engine
    assert engine is not None
    writes: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("UPDATE nodes SET") and "nodes.node_id IN" in statement:
            writes.append(statement)

    node: SyncNode = await sync_nodes("chatty-1")  # type: ignore[operator]
    envelope = await node.next_envelope()
    version = node.verified(envelope).version
    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        for _ in range(300):
            node.outbox.put_nowait(sync_pb2.NodeMessage(heartbeat=sync_pb2.Heartbeat()))
        node.ack(envelope, version)  # read after every heartbeat: once recorded, they were all read

        async def acked() -> bool:
            return (await _listed(admin, "chatty-1")).applied_version == version

        await eventually(acked, message="the ACK after the heartbeats recorded")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert 1 <= len(writes) <= 2, f"{len(writes)} writes for 300 heartbeats"
    assert not node.ended.is_set()


async def test_resync_in_a_loop_from_a_node_that_does_not_read_holds_no_growing_inbox(
    admin: Admin, control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Each Resync put a wake in the stream's inbox; a node that asks in a loop and never
    reads (its stream held by flow control) grew that inbox by one item per message."""
    sync = control_plane.cp.sync
    assert sync is not None
    tls = await control_plane.enroll("flood-1", private_tmp / "flood-1")
    sentinel = sync_pb2.Nack(version=4242, payload_sha256=bytes(32), reason="sentinel")

    async def requests() -> AsyncIterator[sync_pb2.NodeMessage]:
        yield sync_pb2.NodeMessage(
            hello=sync_pb2.Hello(node_id="flood-1", software_version="test-1", mode=CLOUD)
        )
        for _ in range(20_000):
            yield sync_pb2.NodeMessage(resync=sync_pb2.Resync(version=0, reason="again"))
        yield sync_pb2.NodeMessage(nack=sentinel)  # recorded once everything before it was read
        await asyncio.Event().wait()

    async with aio_channel(control_plane.node_address, tls) as channel:
        call = sync_pb2_grpc.ConfigSyncServiceStub(channel).Sync(requests())  # never read
        try:

            async def all_read() -> bool:
                return (await _listed(admin, "flood-1")).last_nack_version == sentinel.version

            await eventually(all_read, timeout=60, message="every Resync read")
            inboxes = sync._inboxes["flood-1"]
            assert len(inboxes) == 1
            assert inboxes[0].queue.qsize() <= 1, f"{inboxes[0].queue.qsize()} items in the inbox"
        finally:
            call.cancel()


async def test_nacks_in_a_loop_are_written_at_a_bounded_rate(admin: Admin, sync_nodes: object) -> None:
    """Each NACK was a database transaction and a log line, as fast as a node could send them."""
    node: SyncNode = await sync_nodes("nacker-1")  # type: ignore[operator]
    await node.next_envelope()
    count = 121
    started = time.monotonic()
    for version in range(1_000, 1_000 + count):
        node.outbox.put_nowait(
            sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=version, payload_sha256=bytes(32), reason="no"))
        )

    async def all_written() -> bool:
        return (await _listed(admin, "nacker-1")).last_nack_version == 1_000 + count - 1

    await eventually(all_written, timeout=30, message="every NACK written")
    took = time.monotonic() - started
    assert took >= (count - 1) / ANSWERS_PER_SECOND, f"{count} NACKs written in {took:.2f} s"
    assert not node.ended.is_set()
