"""A batch's receipt, the time a record dated far ahead is stored at, is the database's clock,
which every replica shares and the rest of evidence (retention, witness) is dated by; not the
ingesting replica's own."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.db.session import create_engine, session_factory
from controlplane.evidence.ingest import Batch, EvidenceIngest
from tests.controlplane.evidence.conftest import NodeKeys, new_dir
from tests.controlplane.evidence.test_retention import write_at
from tests.fixtures.postgres import RunningControlPlane, sql_rows


async def ship_through_replica(
    plane: RunningControlPlane, node_keys: NodeKeys, lines: list[bytes], host_clock: Callable[[], datetime]
) -> None:
    """Ship ``lines`` of node-a through another replica on the same database, whose host
    clock is ``host_clock``."""
    engine = create_engine(plane.database_url)
    try:
        ingest = EvidenceIngest(session_factory(engine), node_keys.verify, host_clock=host_clock)
        ack = await ingest.ingest("node-a", Batch("node-a/0", lines, []))
        assert (ack.refused, ack.head_seq) == (None, len(lines)), ack
    finally:
        await engine.dispose()


async def test_records_keep_their_dates_whatever_the_ingesting_replicas_clock_reads(
    evidence_plane: RunningControlPlane,
    node_keys: NodeKeys,
    private_tmp: Path,
    caplog: pytest.LogCaptureFixture,
    clock_warnings: None,
) -> None:
    """Received by a replica three days behind, a record dated now was "more than a day
    ahead" and stored three days back (partition, time filters): retention dropped it three
    days early. Received by a replica a century ahead, a record dated 2099 kept its date and
    went to the DEFAULT partition, which retention never drops."""
    directory = new_dir(private_tmp, "node-")
    await evidence_plane.enroll("node-a", directory)
    now = time.time()
    far = datetime(2099, 6, 1, tzinfo=UTC).timestamp()
    lines = await write_at(directory, [now, far])
    await ship_through_replica(
        evidence_plane, node_keys, lines[:1], lambda: datetime.now(UTC) - timedelta(days=3)
    )
    await ship_through_replica(
        evidence_plane, node_keys, lines, lambda: datetime.now(UTC) + timedelta(days=36_500)
    )
    rows = sql_rows(
        evidence_plane.database_url,
        "SELECT seq, ts, tableoid::regclass::text FROM evidence_records ORDER BY seq",
    )
    today = datetime.fromtimestamp(now, UTC)
    month = f"evidence_records_y{today.year:04d}m{today.month:02d}"
    (seq1, ts1, where1), (seq2, ts2, where2) = rows
    assert (seq1, where1, seq2, where2) == (1, month, 2, month)
    assert ts1.timestamp() == pytest.approx(now, abs=1e-3)  # its own date
    assert abs(ts2.timestamp() - time.time()) < 60  # its receipt, by the database's clock
    assert "this host's clock is -259200 s off the database's; evidence receipt times" in caplog.text
