"""Retention where the control plane connects as a non-superuser owner of the tables (the
deployment ``migrated_by_owner`` models: migration 0012 revoked UPDATE, DELETE and TRUNCATE
from it): a real node ships to a real control plane, January is pruned behind its signed
statement, ingest continues, and the owner still cannot change or lock out a stored record.
A retention that cannot run says which partition and which privilege, and the control plane
keeps serving."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from controlplane.db.embedded import EmbeddedPostgres
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import Stream, new_dir, received_long_ago
from tests.controlplane.evidence.test_append_only import assert_owner_refused
from tests.controlplane.evidence.test_retention import JAN, admin_cli, partitions, ship_as, write_at
from tests.fixtures.postgres import (
    cp_settings,
    migrated_by_owner,
    running_control_plane,
    sql_execute,
    sql_rows,
)
from tests.helpers import eventually

PRUNE_BEFORE = datetime(2025, 2, 1, tzinfo=UTC)
JANUARY = "evidence_records_y2025m01"


def superuser_url(postgres_server: EmbeddedPostgres, owner_url: str) -> str:
    """The same database as the embedded server's superuser (an operator at psql)."""
    return postgres_server.url(make_url(owner_url).database or "")


async def test_a_non_superuser_owner_prunes_and_still_cannot_change_a_record(
    postgres_server: EmbeddedPostgres, private_tmp: Path
) -> None:
    with migrated_by_owner(postgres_server, "retention_app") as url:
        async with running_control_plane(cp_settings(url, private_tmp)) as plane:
            assert plane.cp.retention is not None
            directory = new_dir(private_tmp, "evidence-owner-")
            now = datetime.now(UTC).timestamp()
            async with aio_channel(plane.node_address, await plane.enroll("node-a", directory)) as channel:
                stream = Stream(channel)
                ack = await stream.ship("node-a/0", await write_at(directory, [JAN] * 3 + [now] * 2))
                assert (ack.head_seq, ack.HasField("error")) == (5, False), ack
                received_long_ago(superuser_url(postgres_server, url))

                result = await plane.cp.retention.prune(PRUNE_BEFORE)
                assert result.partitions == [JANUARY]
                assert [(s.chain_id, s.first_seq, s.last_seq) for s in result.statements] == [
                    ("node-a/0", 1, 3)
                ]
                assert JANUARY not in partitions(plane)
                assert [
                    int(s) for (s,) in sql_rows(url, "SELECT seq FROM evidence_records ORDER BY seq")
                ] == [4, 5]

                # Ingest continues the chain.
                lines = await write_at(directory, [now] * 2)
                ack = await stream.ship("node-a/0", lines[5:])
                assert (ack.head_seq, ack.HasField("error")) == (7, False), ack
                stream.close()
        ((current,),) = sql_rows(url, "SELECT tableoid::regclass::text FROM evidence_records WHERE seq = 7")
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        try:
            assert_owner_refused(engine, ["evidence_records", str(current), "evidence_records_default"])
        finally:
            engine.dispose()


WRITING = (
    "INSERT INTO evidence_records (chain_id, seq, ts, record_id, hash, prev_hash, node_id, correlation_id, "
    "tenant_id, api_key_id, model, outcome, body, received_at) VALUES ('node-a/0', 4, '2025-01-31T23:59:59Z', "
    "'r4', '\\x{h4}', '\\x{h3}', 'node-a', 'c4', 'acme', 'k1', 'small', 'OK', '\\x7b7d', {received_at})"
)
"""A record of January on its way in without the partitions' advisory lock: a replica whose
clock still says January, or ingest's last attempt (``Partitions.hold`` not taken)."""
H4 = b"\x04" * 32

WAITING = (
    "SELECT 1 FROM pg_locks WHERE NOT granted "
    f"AND relation IN (to_regclass('{JANUARY}'), 'evidence_records'::regclass)"
)


@pytest.mark.parametrize("received_at", ["'2000-01-01T00:00:00Z'", "now()"], ids=["long_ago", "now"])
async def test_a_record_being_written_into_a_month_is_stated_or_kept_never_dropped_unstated(
    postgres_server: EmbeddedPostgres, private_tmp: Path, received_at: str
) -> None:
    """Retention waits for a write into a partition it would drop before reading anything of
    it. Received long ago, the record is in the statement (without a lock against writes the
    spans were read without it, and the DROP, which waits for the writer, dropped it
    unstated). Received now, its month is kept: each record stays the retention period from
    its receipt (with the lock taken only after that was checked, it went at once)."""
    with migrated_by_owner(postgres_server, "retention_app") as url:
        async with running_control_plane(cp_settings(url, private_tmp)) as plane:
            retention = plane.cp.retention
            assert retention is not None
            await ship_as(plane, private_tmp, "node-a", [JAN] * 3, tenant_id="acme")
            received_long_ago(superuser_url(postgres_server, url))

            writer = sa.create_engine(url, poolclass=sa.NullPool)
            try:
                with writer.connect() as conn:
                    conn.exec_driver_sql(WRITING.format(h4=H4.hex(), h3="03" * 32, received_at=received_at))
                    prune = asyncio.create_task(retention.prune(PRUNE_BEFORE))  # the write not committed

                    def waiting() -> bool:
                        if prune.done():
                            prune.result()  # its error, if any
                            raise pytest.fail("retention did not wait for the writer")
                        return bool(sql_rows(url, WAITING))

                    await eventually(waiting, message="retention waits for the writer")
                    conn.commit()
                result = await asyncio.wait_for(prune, 30)
            finally:
                writer.dispose()
            if received_at == "now()":
                assert (result.partitions, result.statements) == ([], [])
                assert JANUARY in partitions(plane)
                assert len(sql_rows(url, f"SELECT seq FROM {JANUARY}")) == 4
            else:
                assert result.partitions == [JANUARY]
                (statement,) = result.statements
                assert (statement.first_seq, statement.last_seq, statement.last_hash) == (1, 4, H4)


REFUSED = (
    f"evidence retention could not lock partition {JANUARY} against writes: must be owner of table "
    f"{JANUARY} (SQLSTATE 42501); the control plane's database role must own the evidence partitions"
)


async def test_a_retention_the_database_refuses_names_the_partition_and_the_privilege(
    postgres_server: EmbeddedPostgres, private_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """January's partition owned by another role (made by a DBA, say): retention may not lock
    or drop it. The operator's prune fails FAILED_PRECONDITION naming the partition and the
    missing ownership, the timer logs the same as one line (no traceback), nothing is
    pruned, and the control plane keeps taking evidence."""
    other = f"retention_dba_{os.getpid()}"
    try:
        with migrated_by_owner(postgres_server, "retention_app") as url:
            await _refused_retention(postgres_server, private_tmp, caplog, url, other)
    finally:
        sql_execute(postgres_server.url("postgres"), f"DROP ROLE IF EXISTS {other}")


async def _refused_retention(
    postgres_server: EmbeddedPostgres,
    private_tmp: Path,
    caplog: pytest.LogCaptureFixture,
    url: str,
    other: str,
) -> None:
    superuser = superuser_url(postgres_server, url)
    first = cp_settings(url, private_tmp)
    async with running_control_plane(first) as plane:
        await ship_as(plane, private_tmp, "node-a", [JAN] * 3, tenant_id="acme")
    sql_execute(
        superuser,
        f"CREATE ROLE {other} NOLOGIN",
        f"ALTER TABLE {JANUARY} OWNER TO {other}",
        f"GRANT SELECT, INSERT ON {JANUARY} TO {make_url(url).username}",
    )
    received_long_ago(superuser)

    # The same data dir (and so the same KEK), with the timer.
    timer = replace(first, evidence_retention_days=400.0, evidence_retention_interval=0.2)
    with caplog.at_level(logging.ERROR, logger="controlplane.app"):
        async with running_control_plane(timer) as plane:
            code, _, err = await admin_cli(plane, "evidence", "prune", "--before", "2025-02-01")
            assert code != 0
            assert "FAILED_PRECONDITION" in err, err
            assert REFUSED in err, err
            assert err.rstrip().endswith("; nothing was pruned"), err

            def logged() -> logging.LogRecord:
                records = [r for r in caplog.records if "evidence retention" in r.getMessage()]
                assert records
                return records[0]

            record = await eventually(logged, message="the timer logged its failure")
            assert REFUSED in record.getMessage(), record
            assert record.exc_info is None, record

            # Still serving: another node's evidence is taken; January is intact.
            await ship_as(plane, private_tmp, "node-b", [datetime.now(UTC).timestamp()], tenant_id="acme")
            assert JANUARY in partitions(plane)
    seqs = sql_rows(superuser, "SELECT chain_id, seq FROM evidence_records ORDER BY 1, 2")
    assert [(c, int(s)) for c, s in seqs] == [
        ("node-a/0", 1),
        ("node-a/0", 2),
        ("node-a/0", 3),
        ("node-b/0", 1),
    ]
    assert sql_rows(superuser, "SELECT count(*) FROM evidence_pruned_ranges")[0][0] == 0
