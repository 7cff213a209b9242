"""An export's reads are bounded by what it selects, not by the chain it selects from: the
multiproof of one correlation id's record read every leaf hash of its chain from the
start, so a long chain made each such pack unbounded work and memory. Counted from
PostgreSQL's own plans: each statement the export sent to ``evidence_records`` is run again
under ``EXPLAIN ANALYZE`` with its parameters, and the rows its scans read are summed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from dataplane.evidence.pack_verify import verify
from tests.controlplane.evidence.test_packs import _export, _seqs, _ship_node, _trusted
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_execute

RECORDS = 1500
EVERY = 100
"""The node signs a checkpoint every this many records."""


@pytest.fixture
async def plane(database_url: str, private_tmp: Path) -> AsyncIterator[RunningControlPlane]:
    async with running_control_plane(cp_settings(database_url, private_tmp)) as running:
        await _ship_node(running, private_tmp, "node-a", RECORDS, EVERY, last_note=True)
        sql_execute(running.database_url, "ANALYZE evidence_records")  # as autovacuum would
        yield running


@contextmanager
def _statements() -> Iterator[list[tuple[str, Any]]]:
    """The statements every engine of this process sends meanwhile, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def _rows_read(url: str, sent: list[tuple[str, Any]]) -> int:
    """The rows of ``evidence_records`` (its partitions) the scans of ``sent`` read."""
    total = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal total
        if str(node.get("Relation Name", "")).startswith("evidence_records"):
            read = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            total += read * node["Actual Loops"]
        for child in node.get("Plans", ()):
            walk(child)

    libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq) as conn:
        for statement, parameters in sent:
            if "evidence_records" not in statement or not statement.lstrip().upper().startswith("SELECT"):
                continue
            (plan,) = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).fetchone()  # type: ignore[misc]
            walk(plan[0]["Plan"])
    return total


@pytest.mark.parametrize("seq", [1450, 1500, 101, 100, 7])
async def test_a_pack_of_one_record_of_a_long_chain_reads_a_bounded_part_of_it(
    plane: RunningControlPlane, private_tmp: Path, seq: int
) -> None:
    out = private_tmp / f"one-{seq}.pack"
    with _statements() as sent:
        assert await _export(plane, out, correlation_id=f"corr-node-a-{seq}") == 1
    assert _seqs(out) == {"node-a/0": [seq]}
    report = verify(out, _trusted(plane))
    assert [(c.chain_id, c.records) for c in report.chains] == [("node-a/0", 1)]
    # The leaves from the checkpoint before the record to the one that covers it, and the
    # few rows of the record itself: about one checkpoint's interval, not the whole chain.
    read = _rows_read(plane.database_url, sent)
    assert 0 < read <= EVERY + 20, read
