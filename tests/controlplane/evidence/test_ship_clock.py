"""A Ship stream's certificate expires by the database's clock, as config sync's does: the
certificate's ``not_after`` was dated by it, and every replica shares it. By the replica's own
clock, one ahead refused a valid node's every batch (its spool grew until the clock was
fixed), and one behind kept taking batches over a lapsed certificate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from dataplane.identity import IdentityFiles
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import Stream, new_dir, write_records
from tests.fixtures.postgres import cp_settings, running_control_plane
from tests.helpers import eventually


async def test_a_replica_ahead_of_the_database_takes_a_valid_certificates_batches(
    database_url: str, private_tmp: Path, clock_warnings: None
) -> None:
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane:
        directory = new_dir(private_tmp, "node-")
        tls = await plane.enroll("node-a", directory)
        cert = IdentityFiles(directory).certificate()
        assert cert is not None
        shipping = plane.cp.shipping
        assert shipping is not None
        ahead = cert.not_valid_after_utc - datetime.now(UTC) + timedelta(days=1)
        shipping.clock = lambda: datetime.now(UTC) + ahead
        lines = await write_records(directory, "node-a", 2)
        async with aio_channel(plane.node_address, tls) as channel:
            stream = Stream(channel)
            ack = await stream.ship("node-a/0", lines)
            assert (ack.head_seq, ack.HasField("error")) == (2, False), ack
            stream.close()


async def test_a_replica_behind_the_database_refuses_a_lapsed_certificates_batch(
    database_url: str, private_tmp: Path, clock_warnings: None
) -> None:
    settings = cp_settings(database_url, private_tmp, node_cert_ttl=timedelta(seconds=2))
    async with running_control_plane(settings) as plane:
        shipping = plane.cp.shipping
        assert shipping is not None
        shipping.clock = lambda: datetime.now(UTC) - timedelta(days=1)
        directory = new_dir(private_tmp, "lapsing-")
        tls = await plane.enroll("node-a", directory)
        cert = IdentityFiles(directory).certificate()
        assert cert is not None
        lines = await write_records(directory, "node-a", 2)
        async with aio_channel(plane.node_address, tls) as channel:
            stream = Stream(channel)
            assert (await stream.ship("node-a/0", lines[:1])).head_seq == 1
            await eventually(
                lambda: datetime.now(UTC) > cert.not_valid_after_utc + timedelta(seconds=0.2),
                timeout=5,
                message="certificate expired",
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.ship("node-a/0", lines[1:])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stream.close()
