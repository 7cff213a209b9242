"""A prune behind a long reader of ``evidence_records`` (an export or an admin's query in an
open transaction) gives up after retention's lock timeout instead of waiting for the reader:
its DROP's ACCESS EXCLUSIVE request queues every ingest transaction behind it, so waiting
stalled the whole fleet's evidence ingest for as long as the reader ran. Real node records
shipped to a real control plane on real PostgreSQL; the reader a session of its own."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import NodeKeys, Stream, new_dir, received_long_ago
from tests.controlplane.evidence.test_retention import JAN, admin_cli, partitions, ship_as, write_at
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually

JANUARY = "evidence_records_y2025m01"
PRUNE_LOCK_TIMEOUT = 1.0
INGEST_LOCK_TIMEOUT = 60.0
"""Far above the prune's and the stream's answer timeout: a batch held up until the reader
ends fails the test by that timeout, not by being refused UNAVAILABLE."""
BUSY = (
    f"evidence retention could not drop partition {JANUARY}: its ACCESS EXCLUSIVE lock on "
    f"evidence_records and {JANUARY} was not granted within {PRUNE_LOCK_TIMEOUT:g} s"
)
DROP_WAITING = (
    "SELECT 1 FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock' "
    "AND relation = 'evidence_records'::regclass"
)


@contextmanager
def long_reader(database_url: str) -> Iterator[None]:
    """An export's session: it has read ``evidence_records`` and its transaction stays open
    (ACCESS SHARE on the table and every partition) until the block ends."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM evidence_records")).scalar_one() > 0
            yield
            conn.rollback()
    finally:
        engine.dispose()


def stored(plane: RunningControlPlane) -> tuple[list[str], list[int], list[int]]:
    """The partitions, record seqs and checkpoint sizes a prune would change."""
    records = sql_rows(plane.database_url, "SELECT seq FROM evidence_records ORDER BY seq")
    checkpoints = sql_rows(plane.database_url, "SELECT tree_size FROM evidence_checkpoints ORDER BY 1")
    return partitions(plane), [int(s) for (s,) in records], [int(n) for (n,) in checkpoints]


async def ship_january(plane: RunningControlPlane, stream: Stream, directory: Path, keys: NodeKeys) -> None:
    """Seqs 1..3 dated in January and 4 now, checkpoints at 1 and 3 (a prune of January
    deletes the one at 1, superseded), all received long ago."""
    now = datetime.now(UTC).timestamp()
    lines = await write_at(directory, [JAN] * 3 + [now])
    hashes = [json.loads(line)["hash"] for line in lines]
    notes = [keys.checkpoint("node-a", "node-a/0", hashes[:n]) for n in (1, 3)]
    ack = await stream.ship("node-a/0", lines, notes)
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (4, 2, False), ack
    received_long_ago(plane.database_url)


async def test_a_prune_behind_a_long_reader_gives_up_and_ingest_goes_on(
    database_url: str, private_tmp: Path, node_keys: NodeKeys
) -> None:
    settings = cp_settings(
        database_url,
        private_tmp,
        evidence_lock_timeout=INGEST_LOCK_TIMEOUT,
        evidence_retention_lock_timeout=PRUNE_LOCK_TIMEOUT,
    )
    async with running_control_plane(settings, verify_checkpoint_signature=node_keys.verify) as plane:
        directory = new_dir(private_tmp, "evidence-node-")
        async with aio_channel(plane.node_address, await plane.enroll("node-a", directory)) as channel:
            stream = Stream(channel)
            await ship_january(plane, stream, directory, node_keys)
            before = stored(plane)
            assert (JANUARY in before[0], before[1:]) == (True, ([1, 2, 3, 4], [1, 3]))

            with long_reader(database_url):
                prune = asyncio.create_task(admin_cli(plane, "evidence", "prune", "--before", "2025-02-01"))

                def drop_waiting() -> bool:
                    if prune.done():
                        return True  # gave up already (a loaded machine): its answer is checked below
                    return bool(sql_rows(database_url, DROP_WAITING))

                await eventually(drop_waiting, timeout=30, message="the prune's DROP waits for the reader")
                # A batch of this month meanwhile: its COPY queues behind the DROP's request
                # until the prune gives up, not until the reader ends (Stream.ship's timeout).
                lines = await write_at(directory, [datetime.now(UTC).timestamp()] * 2)
                loop = asyncio.get_running_loop()
                started = loop.time()
                ack = await stream.ship("node-a/0", lines[4:])
                held_up = loop.time() - started
                assert (ack.head_seq, ack.stored, ack.HasField("error")) == (6, 2, False), ack
                assert held_up < PRUNE_LOCK_TIMEOUT + 5.0

                code, _, err = await prune
                assert code != 0
                assert "UNAVAILABLE" in err, err
                assert BUSY in err, err
                assert "nothing was pruned" in err, err
                # Nothing half done: no statement, January and its superseded checkpoint kept.
                assert sql_rows(database_url, "SELECT count(*) FROM evidence_pruned_ranges") == [(0,)]
                assert stored(plane) == (before[0], [1, 2, 3, 4, 5, 6], before[2])

            # The reader gone, the next prune goes through.
            assert plane.cp.retention is not None
            result = await plane.cp.retention.prune(datetime(2025, 2, 1, tzinfo=UTC))
            assert result.partitions == [JANUARY]
            assert [(s.first_seq, s.last_seq) for s in result.statements] == [(1, 3)]
            assert result.superseded == {"node-a/0": (1, 0)}
            assert JANUARY not in partitions(plane)
            assert [int(s) for (s,) in sql_rows(database_url, "SELECT seq FROM evidence_records")] == [
                4,
                5,
                6,
            ]
            stream.close()


async def test_the_retention_timer_behind_a_long_reader_logs_one_line_and_prunes_once_it_ends(
    database_url: str, private_tmp: Path, node_keys: NodeKeys, caplog: pytest.LogCaptureFixture
) -> None:
    first = cp_settings(database_url, private_tmp)
    async with running_control_plane(first, verify_checkpoint_signature=node_keys.verify) as plane:
        directory = new_dir(private_tmp, "evidence-node-")
        async with aio_channel(plane.node_address, await plane.enroll("node-a", directory)) as channel:
            stream = Stream(channel)
            await ship_january(plane, stream, directory, node_keys)
            stream.close()

    # The same data dir (and so the same KEK), with the timer.
    timer = replace(
        first,
        evidence_retention_days=400.0,
        evidence_retention_interval=0.2,
        evidence_retention_lock_timeout=PRUNE_LOCK_TIMEOUT,
    )
    reader = ExitStack()
    reader.enter_context(long_reader(database_url))  # before the timer's first round
    try:
        with caplog.at_level(logging.WARNING, logger="controlplane.app"):
            async with running_control_plane(timer, verify_checkpoint_signature=node_keys.verify) as plane:
                retention = plane.cp.retention
                assert retention is not None

                def logged() -> logging.LogRecord:
                    records = [r for r in caplog.records if "evidence retention" in r.getMessage()]
                    assert records
                    return records[0]

                record = await eventually(logged, timeout=30, message="the timer logged its giving up")
                assert BUSY in record.getMessage(), record
                assert (record.levelno, record.exc_info) == (logging.WARNING, None), record
                assert JANUARY in partitions(plane)
                assert await retention.pruned_statement("node-a/0") is None

                # Still taking evidence while the reader runs.
                await ship_as(plane, private_tmp, "node-b", [datetime.now(UTC).timestamp()], tenant_id="acme")

                reader.close()

                async def pruned() -> bool:
                    return await retention.pruned_statement("node-a/0") is not None

                await eventually(pruned, timeout=30, message="the timer pruned January once the reader ended")
                assert JANUARY not in partitions(plane)
    finally:
        reader.close()


MARCH = datetime(2025, 3, 15, tzinfo=UTC).timestamp()
MARCH_PARTITION = "evidence_records_y2025m03"
CREATE_WAITING = (
    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'CREATE TABLE%'"
)


async def test_a_partition_made_behind_a_long_reader_is_given_up_and_the_batch_resent(
    database_url: str, private_tmp: Path
) -> None:
    """The first record of a month without a partition makes it (``Partitions.ensure``), which
    waits for a lock on ``evidence_records`` behind any open reader. Without a lock timeout it
    waited as long as the reader ran, holding the partitions' advisory lock that every batch
    of a past month then queued behind; now it gives up after ingest's lock timeout: the
    stream ends UNAVAILABLE, nothing stored, and the node's resend is stored once the reader
    is gone."""
    lock_timeout = 1.0
    settings = cp_settings(database_url, private_tmp, evidence_lock_timeout=lock_timeout)
    async with running_control_plane(settings) as plane:
        directory = new_dir(private_tmp, "evidence-node-")
        tls = await plane.enroll("node-a", directory)
        now = await write_at(directory, [datetime.now(UTC).timestamp()])
        async with aio_channel(plane.node_address, tls) as channel:
            ack = await Stream(channel).ship("node-a/0", now)  # the reader has a row to read
            assert (ack.head_seq, ack.HasField("error")) == (1, False), ack
        lines = await write_at(directory, [MARCH])
        with long_reader(database_url):
            async with aio_channel(plane.node_address, tls) as channel:
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await Stream(channel).ship("node-a/0", lines[1:])
                took = loop.time() - started
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            assert took < lock_timeout + 5.0
            assert MARCH_PARTITION not in partitions(plane)
            assert not sql_rows(database_url, CREATE_WAITING)  # gave up, not left waiting
        async with aio_channel(plane.node_address, tls) as channel:
            ack = await Stream(channel).ship("node-a/0", lines[1:])
            assert (ack.head_seq, ack.stored, ack.HasField("error")) == (2, 1, False), ack
        assert MARCH_PARTITION in partitions(plane)
