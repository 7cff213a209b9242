"""An export's reads are bounded by what it selects, not by the chain it selects from: the
multiproof of one correlation id's record read every leaf hash of its chain from the
start, so a long chain made each such pack unbounded work and memory. Counted from
PostgreSQL's own plans (``tests.fixtures.plans``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dataplane.evidence.pack_verify import verify
from tests.controlplane.evidence.test_packs import _export, _seqs, _ship_node, _trusted
from tests.fixtures.plans import rows_read, statements
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


@pytest.mark.parametrize("seq", [1450, 1500, 101, 100, 7])
async def test_a_pack_of_one_record_of_a_long_chain_reads_a_bounded_part_of_it(
    plane: RunningControlPlane, private_tmp: Path, seq: int
) -> None:
    out = private_tmp / f"one-{seq}.pack"
    with statements() as sent:
        assert await _export(plane, out, correlation_id=f"corr-node-a-{seq}") == 1
    assert _seqs(out) == {"node-a/0": [seq]}
    report = verify(out, _trusted(plane))
    assert [(c.chain_id, c.records) for c in report.chains] == [("node-a/0", 1)]
    # The leaves from the checkpoint before the record to the one that covers it, and the
    # few rows of the record itself: about one checkpoint's interval, not the whole chain.
    read = rows_read(plane.database_url, sent, "evidence_records")
    assert 0 < read <= EVERY + 20, read
