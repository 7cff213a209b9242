"""Retention deletes a chain's checkpoints and compact ranges its pruned range superseded
(migration 0028), and nothing else: a real node (enrolled, its chain written and signed by
``EvidenceLog``) ships to a real control plane on real PostgreSQL, January is pruned, and
what remains still takes later batches and checkpoints, checks a checkpoint of an earlier
size, and exports packs that verify offline with the control plane's public key alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dataplane.evidence import checkpoint
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.pack_verify import verify
from dataplane.identity import IdentityFiles
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import Stream, new_dir, received_long_ago
from tests.controlplane.evidence.test_packs import _export, _seqs, _trusted
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import cp_settings, running_control_plane, sql_execute

JAN = datetime(2025, 1, 15, tzinfo=UTC).timestamp()
PRUNE_BEFORE = datetime(2025, 2, 1, tzinfo=UTC)
PRUNED = 2100
"""Seqs 1..2100 dated in January (pruned), 2101..2120 now."""
SIGNED = [500, 1100, 2050, 2110, 2115, 2120]
"""Where the node signs a checkpoint."""


async def _write(
    directory: Path, pruned: int, count: int, signed: list[int]
) -> tuple[list[bytes], dict[int, str]]:
    """node-a's log: seqs 1..``pruned`` dated in January, the rest up to ``count`` now (odd
    seqs tenant acme, even globex), a checkpoint signed at each of ``signed``; its lines and
    notes by size."""
    path = log_path(directory, "node-a")
    now = datetime.now(UTC).timestamp()
    key = IdentityFiles(directory).private_key()
    async with EvidenceLog(
        path, "node-a", signer=key, checkpoint_records=10**9, checkpoint_interval=3600
    ) as log:
        for seq in range(1, count + 1):
            tenant = "acme" if seq % 2 else "globex"
            log.append(
                {"ts": JAN if seq <= pruned else now, "correlation_id": f"c-{seq}", "tenant_id": tenant}
            )
            if seq in signed:
                assert await log.checkpoint()
    notes = (n.decode() for n in checkpoint.read_notes(checkpoint.checkpoints_path(path)))
    return path.read_bytes().splitlines(keepends=True), dict(zip(signed, notes, strict=True))


def _rows(database_url: str, table: str, where: str = "true") -> list[int]:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT tree_size FROM {table} WHERE {where} ORDER BY tree_size")
            return [int(n) for (n,) in rows]
    finally:
        engine.dispose()


async def test_pruning_deletes_superseded_checkpoints_and_what_remains_still_proves(
    database_url: str, private_tmp: Path
) -> None:
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane:
        assert plane.cp.retention is not None
        directory = new_dir(private_tmp, "node-a-")
        tls = await plane.enroll("node-a", directory)
        lines, notes = await _write(directory, PRUNED, 2120, SIGNED)
        async with aio_channel(plane.node_address, tls) as channel:
            stream = Stream(channel)
            ack = await stream.ship("node-a/0", lines[:2110], [notes[n] for n in (500, 1100, 2050, 2110)])
            assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (2110, 4, False), ack
            assert _rows(plane.database_url, "evidence_checkpoints") == [500, 1100, 2050, 2110]
            assert _rows(plane.database_url, "evidence_frontiers") == [1024, 2048]

            received_long_ago(plane.database_url)
            result = await plane.cp.retention.prune(PRUNE_BEFORE)
            assert [(s.chain_id, s.first_seq, s.last_seq) for s in result.statements] == [
                ("node-a/0", 1, PRUNED)
            ]
            # Kept: the newest at or below 2100 and all above it.
            assert result.superseded == {"node-a/0": (2, 1)}
            assert _rows(plane.database_url, "evidence_checkpoints") == [2050, 2110]
            assert _rows(plane.database_url, "evidence_frontiers") == [2048]

            # Later records and their checkpoint are taken...
            ack = await stream.ship("node-a/0", lines[2110:], [notes[2120]])
            assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (2120, 1, False), ack
            # ...and a checkpoint of an earlier size, checked from what remains; one of a
            # deleted size is not stored again, one still held is not stored twice.
            ack = await stream.ship("node-a/0", [], [notes[2115], notes[1100], notes[2050]])
            assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (2120, 1, False), ack
            stream.close()
        assert _rows(plane.database_url, "evidence_checkpoints", "root_matches") == [2050, 2110, 2115, 2120]
        assert _rows(plane.database_url, "evidence_checkpoints") == [2050, 2110, 2115, 2120]

        out = private_tmp / "acme.pack"
        assert await _export(plane, out, tenant_id="acme") == 10
        assert _seqs(out) == {"node-a/0": list(range(2101, 2121, 2))}
        code, stdout, err = await _signalbox(
            "evidence", "verify", str(out), "--trust-key", str(plane.trust_key_path)
        )
        assert code == 0, stdout + err
        assert "every stored record with seq 2101..2120 searched, 10 matched" in stdout, stdout
        # One record, proven from the checkpoint of 2110's compact range against that of 2115.
        one = private_tmp / "one.pack"
        assert await _export(plane, one, correlation_id="c-2113") == 1
        report = verify(one, _trusted(plane))
        assert [(c.chain_id, c.from_seq, c.to_seq, c.records) for c in report.chains] == [
            ("node-a/0", 2101, 2115, 1)
        ]


async def test_a_function_owner_without_delete_keeps_the_checkpoints_and_still_prunes(
    database_url: str, private_tmp: Path
) -> None:
    """``evidence_prune_superseded`` owned by a role with no DELETE on the two tables (as a
    non-superuser owner's deployment has it, migration 0012): nothing of them is deleted,
    the month is still pruned behind its statement, and the result says so (None)."""
    role = f"{make_url(database_url).database}_nodelete"
    sql_execute(
        database_url,
        f"CREATE ROLE {role} NOLOGIN",
        f"ALTER FUNCTION evidence_prune_superseded(text) OWNER TO {role}",
    )
    try:
        async with running_control_plane(cp_settings(database_url, private_tmp)) as plane:
            assert plane.cp.retention is not None
            directory = new_dir(private_tmp, "node-a-")
            tls = await plane.enroll("node-a", directory)
            lines, notes = await _write(directory, 6, 8, [2, 4, 8])
            async with aio_channel(plane.node_address, tls) as channel:
                stream = Stream(channel)
                ack = await stream.ship("node-a/0", lines, list(notes.values()))
                assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (8, 3, False), ack
                stream.close()
            received_long_ago(plane.database_url)
            result = await plane.cp.retention.prune(PRUNE_BEFORE)
            assert [(s.chain_id, s.first_seq, s.last_seq) for s in result.statements] == [("node-a/0", 1, 6)]
            assert result.partitions == ["evidence_records_y2025m01"]
            assert result.superseded == {"node-a/0": None}
            assert _rows(plane.database_url, "evidence_checkpoints") == [2, 4, 8]
    finally:
        sql_execute(database_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
