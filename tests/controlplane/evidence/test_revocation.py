"""A node revoked while it ships evidence: the stream ends and nothing more of it is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from dataplane.identity import IdentityFiles
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import TIMEOUT, NodeKeys, Stream, new_dir, write_records
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually


@pytest.fixture
async def admin(evidence_plane: RunningControlPlane) -> AsyncIterator[admin_pb2_grpc.AdminServiceStub]:
    async with grpc.aio.insecure_channel(evidence_plane.address) as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)


def stored(plane: RunningControlPlane) -> list[int]:
    return [int(r[0]) for r in sql_rows(plane.database_url, "SELECT seq FROM evidence_records ORDER BY seq")]


async def test_the_next_batch_after_revocation_is_refused_and_not_stored(
    evidence_plane: RunningControlPlane,
    node: tuple[Stream, Path],
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 6)
    assert (await stream.ship("node-a/0", lines[:3])).head_seq == 3
    revoked = await admin.RevokeNode(
        admin_pb2.RevokeNodeRequest(node_id="node-a"), metadata=evidence_plane.metadata, timeout=TIMEOUT
    )
    assert revoked.revoked_certificates == 1
    # Sent right after RevokeNode returned: refused whether the replica's revocation
    # notice has ended the stream yet or the batch's own certificate check stops it.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.ship("node-a/0", lines[3:])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "node node-a: certificate revoked"
    assert stored(evidence_plane) == [1, 2, 3]
    chain = sql_rows(evidence_plane.database_url, "SELECT head_seq FROM evidence_chains")
    assert [tuple(r) for r in chain] == [(3,)]


async def test_a_revocation_this_replica_did_not_hear_of_stops_the_next_batch_in_its_transaction(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    """Revoked through another replica whose notice this one missed (written to the database
    as that replica's RevokeNode would): the batch's own transaction reads the certificate and
    refuses it; nothing of it is stored."""
    stream, directory = node
    lines = await write_records(directory, "node-a", 6)
    assert (await stream.ship("node-a/0", lines[:3])).head_seq == 3
    engine = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE node_certificates SET revoked_at = now() WHERE node_id = 'node-a'")
    finally:
        engine.dispose()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.ship("node-a/0", lines[3:])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "node node-a: certificate revoked"
    assert stored(evidence_plane) == [1, 2, 3]


async def test_an_idle_stream_of_a_revoked_node_is_ended_at_once(
    evidence_plane: RunningControlPlane,
    node: tuple[Stream, Path],
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    stream, directory = node
    assert (await stream.ship("node-a/0", await write_records(directory, "node-a", 2))).head_seq == 2
    await admin.RevokeNode(
        admin_pb2.RevokeNodeRequest(node_id="node-a"), metadata=evidence_plane.metadata, timeout=TIMEOUT
    )
    # No batch is sent: the revocation notice alone ends the stream (as it ends config sync).
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(stream.call.read(), TIMEOUT)
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ended.value.details() == "node node-a: certificate revoked"
    assert stored(evidence_plane) == [1, 2]


async def test_a_new_stream_of_a_revoked_node_is_refused(
    evidence_plane: RunningControlPlane,
    node: tuple[Stream, Path],
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    stream, directory = node
    await admin.RevokeNode(
        admin_pb2.RevokeNodeRequest(node_id="node-a"), metadata=evidence_plane.metadata, timeout=TIMEOUT
    )
    await write_records(directory, "node-a", 1)
    again = Stream(stream.channel)
    # Refused when the stream opens, before any batch: the status is read from the call,
    # not from a send racing the server's close (that surfaces as a client-side INTERNAL).
    code = await asyncio.wait_for(again.call.code(), TIMEOUT)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in (await again.call.details() or "")
    again.close()
    assert stored(evidence_plane) == []


async def test_a_batch_after_the_streams_certificate_expired_is_refused_and_not_stored(
    database_url: str, private_tmp: Path, node_keys: NodeKeys
) -> None:
    """TLS checks a certificate only at the handshake: a stream opened while it was valid
    takes no batch once it has expired (a renewing node reconnects with its new one)."""
    settings = cp_settings(database_url, private_tmp, node_cert_ttl=timedelta(seconds=2))
    async with running_control_plane(settings, verify_checkpoint_signature=node_keys.verify) as plane:
        directory = new_dir(private_tmp, "lapsing-")
        tls = await plane.enroll("node-a", directory)
        lines = await write_records(directory, "node-a", 4)
        async with aio_channel(plane.node_address, tls) as channel:
            stream = Stream(channel)
            assert (await stream.ship("node-a/0", lines[:2])).head_seq == 2
            cert = IdentityFiles(directory).certificate()
            assert cert is not None
            await eventually(
                lambda: datetime.now(UTC) > cert.not_valid_after_utc + timedelta(seconds=0.2),
                timeout=5,
                message="certificate expired",
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.ship("node-a/0", lines[2:])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.details() == "node node-a: certificate expired; reconnect with a renewed one"
            stream.close()
        assert stored(plane) == [1, 2]
