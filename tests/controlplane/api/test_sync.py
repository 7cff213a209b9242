"""ConfigSyncService: real streams, envelopes verified, ACKs and NACKs recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from controlplane.api.sync import MAX_REFUSED_PER_STREAM, MAX_STREAMS_PER_NODE, RefusedVersions
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import sync_pb2, sync_pb2_grpc
from signalbox.tls import aio_channel
from tests.controlplane.conftest import TIMEOUT, Admin, SyncNode
from tests.fixtures.postgres import RunningControlPlane
from tests.helpers import eventually


async def _node(admin: Admin, node_id: str) -> admin_pb2.Node:
    nodes = (await admin.ListNodes(admin_pb2.ListNodesRequest())).nodes
    # Said Hello: an enrolled node is listed before (never connected, nothing seen).
    found = [n for n in nodes if n.node_id == node_id and n.HasField("last_seen_at")]
    assert found, f"node {node_id} not listed from a Hello"
    return found[0]


async def test_hello_gets_the_latest_snapshot_and_ack_is_recorded(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    await admin.seed()
    latest = await admin.latest_version()
    node: SyncNode = await sync_nodes("node-a")  # type: ignore[operator]
    envelope = await node.next_envelope()
    snapshot = node.verified(envelope)
    assert snapshot.version == latest
    assert [t.name for t in snapshot.tenants] == ["acme"]

    listed = await _node(admin, "node-a")
    assert listed.connected
    assert listed.software_version == "test-1"
    assert listed.applied_version == 0

    node.ack(envelope, snapshot.version)

    async def acked() -> bool:
        n = await _node(admin, "node-a")
        return n.applied_version == latest and n.last_ack_at.seconds > 0

    await eventually(acked, message="ACK visible in ListNodes")


async def test_a_node_that_already_has_the_latest_gets_nothing_until_a_change(
    admin: Admin, sync_nodes: object
) -> None:
    latest = await admin.latest_version()
    node: SyncNode = await sync_nodes("node-b", latest)  # type: ignore[operator]
    await eventually(lambda: _node(admin, "node-b"), message="node registered")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="acme"))
    envelope = await node.next_envelope()
    assert node.verified(envelope).version == latest + 1
    assert node.received.empty()


async def test_a_policy_change_is_pushed_to_a_connected_node(admin: Admin, sync_nodes: object) -> None:
    await admin.seed()
    node: SyncNode = await sync_nodes("node-c")  # type: ignore[operator]
    first = await node.next_envelope()
    node.ack(first, node.verified(first).version)

    await admin.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant="acme", document="default_model: large"))
    pushed = node.verified(await node.next_envelope())
    assert [p.document_json for p in pushed.policies] == ['{"default_model":"large"}']
    assert pushed.previous_hash  # chained to what came before


async def test_a_nacked_version_is_never_resent_but_later_ones_are(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    await admin.seed()
    node: SyncNode = await sync_nodes("node-d")  # type: ignore[operator]
    envelope = await node.next_envelope()
    refused = node.verified(envelope).version
    node.nack(envelope, refused, "payload does not compile: $.models[0]")

    async def nack_recorded() -> bool:
        n = await _node(admin, "node-d")
        return n.last_nack_version == refused and n.last_nack_at.seconds > 0

    await eventually(nack_recorded, message="NACK visible in ListNodes")
    assert (await _node(admin, "node-d")).last_nack_reason == "payload does not compile: $.models[0]"

    # Reconnect with nothing applied: the refused version is not offered again.
    await node.close()
    again: SyncNode = await sync_nodes("node-d")  # type: ignore[operator]
    await eventually(lambda: _node(admin, "node-d"), message="node re-registered")
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="later"))
    later = node.verified(await again.next_envelope())
    assert later.version == refused + 1
    assert again.received.empty()


async def test_a_node_nacking_many_versions_holds_a_bounded_set_on_its_stream(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    node: SyncNode = await sync_nodes("node-nacks")  # type: ignore[operator]
    envelope = await node.next_envelope()
    real = node.verified(envelope).version
    # Versions no snapshot of its group has: shown as its last NACK, remembered nowhere.
    for i in range(3 * MAX_REFUSED_PER_STREAM):
        node.outbox.put_nowait(
            sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=1000 + i, payload_sha256=bytes(32), reason="no"))
        )
    node.nack(envelope, real, "refused for real")

    async def last_nack() -> bool:
        return (await _node(admin, "node-nacks")).last_nack_version == real

    # 193 NACKs, a transaction each, in order: under a loaded machine well past 10 s.
    await eventually(last_nack, timeout=60, message="the last NACK recorded")
    assert control_plane.cp.sync is not None
    assert control_plane.cp.sync.refusals_held("node-nacks") == [1]
    # The real refusal is kept: the next change is sent, the refused version is not.
    await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="later"))
    assert node.verified(await node.next_envelope()).version == real + 1


def test_a_streams_refusals_keep_the_newest_versions_up_to_the_bound() -> None:
    refused = RefusedVersions([(v, b"h") for v in range(10 * MAX_REFUSED_PER_STREAM)])
    assert len(refused) == MAX_REFUSED_PER_STREAM
    newest = 10 * MAX_REFUSED_PER_STREAM - 1
    assert (newest, b"h") in refused
    assert (newest - MAX_REFUSED_PER_STREAM, b"h") not in refused


async def test_a_burst_of_changes_is_pushed_as_the_newest_snapshot(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    assert control_plane.cp.broker is not None
    # Wide enough that the burst below fits in one window even on a loaded machine.
    control_plane.cp.broker.debounce = 0.5
    node: SyncNode = await sync_nodes("node-e")  # type: ignore[operator]
    first = await node.next_envelope()
    node.ack(first, node.verified(first).version)
    await asyncio.gather(*(admin.CreateTenant(admin_pb2.CreateTenantRequest(name=f"t{i}")) for i in range(8)))
    latest = await admin.latest_version()
    seen = []
    while not seen or seen[-1] < latest:
        seen.append(node.verified(await node.next_envelope()).version)
    assert seen == sorted(seen)
    assert len(seen) < 8, "a burst is debounced, not pushed change by change"


async def test_injected_envelopes_reach_only_the_named_node(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    one: SyncNode = await sync_nodes("one")  # type: ignore[operator]
    two: SyncNode = await sync_nodes("two")  # type: ignore[operator]
    envelope = await one.next_envelope()
    await two.next_envelope()
    tampered = type(envelope).FromString(envelope.SerializeToString())
    tampered.payload = tampered.payload + b"\x00"
    assert control_plane.cp.sync is not None
    assert control_plane.cp.sync.inject(tampered, "one") == 1
    assert (await one.next_envelope()).payload == tampered.payload
    assert two.received.empty()


async def test_the_first_message_must_be_a_hello(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    async def requests() -> object:
        yield sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=1))

    tls = await control_plane.enroll("hello-tester", private_tmp / "hello-tester")
    async with aio_channel(control_plane.node_address, tls) as channel:
        call = sync_pb2_grpc.ConfigSyncServiceStub(channel).Sync(requests(), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (info.value.details() or "")


async def test_stopping_the_control_plane_ends_streams_cleanly(
    admin: Admin, control_plane: RunningControlPlane, sync_nodes: object
) -> None:
    node: SyncNode = await sync_nodes("node-f")  # type: ignore[operator]
    await node.next_envelope()
    await control_plane.cp.stop()
    await asyncio.wait_for(node.ended.wait(), TIMEOUT)
    assert node.end_code == grpc.StatusCode.OK


async def test_a_node_claiming_a_foreign_hash_raises_an_alarm(
    admin: Admin, sync_nodes: object, caplog: pytest.LogCaptureFixture
) -> None:
    latest = await admin.latest_version()
    node: SyncNode = await sync_nodes("node-g", latest, b"\x01" * 32)  # type: ignore[operator]
    await eventually(lambda: _node(admin, "node-g"), message="node registered")
    assert any("ALARM" in r.getMessage() and "node-g" in r.getMessage() for r in caplog.records)
    assert node.received.empty()


async def test_a_nodes_streams_cannot_pile_up_a_newer_one_ends_the_oldest(
    control_plane: RunningControlPlane, private_tmp: Path
) -> None:
    # Each stream a node opened stayed open (a subscription, its Hello a row write): one
    # certified node could open them without end on one connection.
    tls = await control_plane.enroll("piling", private_tmp / "piling")
    streams = [SyncNode(control_plane, "piling", tls) for _ in range(MAX_STREAMS_PER_NODE + 1)]
    try:
        for i, node in enumerate(streams):
            await node.connect()
            await node.next_envelope()  # this stream is subscribed
            assert control_plane.cp.sync.streams["piling"] == min(i + 1, MAX_STREAMS_PER_NODE)
        await asyncio.wait_for(streams[0].ended.wait(), TIMEOUT)
        assert streams[0].end_code is grpc.StatusCode.ABORTED
        assert "superseded by a newer sync stream" in await streams[0].call.details()
        assert not any(node.ended.is_set() for node in streams[1:])
    finally:
        for node in streams:
            await node.close()
