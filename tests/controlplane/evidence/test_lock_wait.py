"""A shipped batch whose chain another session holds locked (an operator's transaction left
open) is refused UNAVAILABLE after the lock timeout, nothing of it stored, instead of
holding its stream and a pooled connection for as long as that session lives; once the
lock is gone the resent batch is stored once."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from controlplane.db.failures import DATABASE_BUSY
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import NodeKeys, Stream, new_dir, write_records
from tests.fixtures.postgres import cp_settings, running_control_plane, sql_rows


async def test_a_batch_waiting_on_a_held_chain_lock_is_refused_after_the_lock_timeout(
    database_url: str, private_tmp: Path, node_keys: NodeKeys
) -> None:
    settings = cp_settings(database_url, private_tmp, evidence_lock_timeout=0.5)
    async with running_control_plane(settings, verify_checkpoint_signature=node_keys.verify) as plane:
        directory = new_dir(private_tmp, "evidence-node-")
        tls = await plane.enroll("node-a", directory)
        lines = await write_records(directory, "node-a", 4)
        async with aio_channel(plane.node_address, tls) as channel:
            first = Stream(channel)
            assert (await first.ship("node-a/0", lines[:2])).head_seq == 2

            holder = sa.create_engine(database_url, poolclass=sa.NullPool)
            try:
                with holder.connect() as session:
                    session.execute(
                        sa.text("SELECT 1 FROM evidence_chains WHERE chain_id = 'node-a/0' FOR UPDATE")
                    )
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await first.ship("node-a/0", lines[2:])
                    session.rollback()
            finally:
                holder.dispose()
            assert (refused.value.code(), refused.value.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                DATABASE_BUSY,
            )

            again = Stream(channel)
            assert (await again.ship("node-a/0", lines[2:])).head_seq == 4
            again.close()
        assert sql_rows(database_url, "SELECT count(*), count(DISTINCT seq) FROM evidence_records") == [
            (4, 4)
        ]
        assert sql_rows(database_url, "SELECT kind FROM evidence_alarms") == []
