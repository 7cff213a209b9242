"""A config-sync stream whose node's ACK cannot be recorded (the database went away under
it) ends UNAVAILABLE, as every other database failure on the node port does: ended OK, the
node took the stream for closed as usual, its ACK never recorded."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc

from signalbox.api.admin.v1 import admin_pb2_grpc
from tests.controlplane.conftest import TIMEOUT, Admin, enrolled_sync_node
from tests.fixtures.postgres import RestartablePostgres, cp_settings, running_control_plane


async def test_an_ack_the_database_fails_to_record_ends_the_stream_unavailable(
    restartable_postgres: RestartablePostgres, private_tmp: Path
) -> None:
    database_url = restartable_postgres.database("sync_ack")
    async with (
        running_control_plane(cp_settings(database_url, private_tmp)) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        await Admin(admin_pb2_grpc.AdminServiceStub(channel), running.metadata).seed()
        directory = Path(tempfile.mkdtemp(prefix="sync-node-", dir=private_tmp))
        node = await enrolled_sync_node(running, "node-a", directory)
        try:
            # A snapshot arrived: the stream is set up, its reader waiting for the node.
            envelope = await node.next_envelope()
            version = node.verified(envelope).version
            await asyncio.to_thread(restartable_postgres.stop, "fast")
            try:
                node.ack(envelope, version)
                await asyncio.wait_for(node.ended.wait(), TIMEOUT)
            finally:
                await asyncio.to_thread(restartable_postgres.start)
            assert node.end_code == grpc.StatusCode.UNAVAILABLE
            assert await node.call.details() == "the database is unavailable; retry"
        finally:
            node.outbox.put_nowait(None)
            node.call.cancel()
            if node._channel is not None:
                await node._channel.close()
