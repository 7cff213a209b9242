"""A checkpoint of a size not in the batch that brings it (signed after its records were
shipped, or an older one offered again) is checked from the nearest compact range stored
before its size, not from every leaf hash of the chain: on a long chain that was work and
memory per note that grew with the chain. Rows read are counted from PostgreSQL's own plans
(``tests.fixtures.plans``)."""

from __future__ import annotations

import json
from pathlib import Path

from controlplane.evidence.tree import FRONTIER_EVERY, StoredTree
from tests.controlplane.evidence.conftest import NodeKeys, Stream, write_records
from tests.fixtures.plans import rows_read, statements
from tests.fixtures.postgres import RunningControlPlane, sql_execute, sql_rows

RECORDS = 8 * FRONTIER_EVERY + 300
SHIPPED_IN = 1000
"""Records per batch: the compact ranges are stored wherever a batch ends."""


async def test_a_checkpoint_of_an_earlier_size_reads_a_bounded_part_of_the_chain(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], node_keys: NodeKeys
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", RECORDS)
    for start in range(0, RECORDS, SHIPPED_IN):  # no checkpoint note with them
        ack = await stream.ship("node-a/0", lines[start : start + SHIPPED_IN])
        assert not ack.HasField("error"), ack
    assert ack.head_seq == RECORDS
    url = evidence_plane.database_url
    sizes = [r[0] for r in sql_rows(url, "SELECT tree_size FROM evidence_frontiers ORDER BY 1")]
    assert sizes == list(range(FRONTIER_EVERY, RECORDS + 1, FRONTIER_EVERY))
    sql_execute(url, "ANALYZE evidence_records")  # as autovacuum would
    hashes = [json.loads(line)["hash"] for line in lines]
    for size in (RECORDS - 1, 4 * FRONTIER_EVERY, 3 * FRONTIER_EVERY - 1, FRONTIER_EVERY + 5, 3):
        note = node_keys.checkpoint("node-a", "node-a/0", hashes[:size])
        with statements() as sent:
            ack = await stream.ship("node-a/0", [], [note])
        assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (RECORDS, 1, False), size
        read = rows_read(url, sent, "evidence_records")
        assert read < FRONTIER_EVERY, (size, read)
        # Stored with the compact range of exactly its records, which exports prove from.
        expected = StoredTree()
        for digest in hashes[:size]:
            expected.append(bytes.fromhex(digest))
        ((frontier, matches),) = sql_rows(
            url, f"SELECT frontier, root_matches FROM evidence_checkpoints WHERE tree_size = {size}"
        )
        assert (bytes(frontier), matches) == (expected.to_bytes(), True), size

    # A root other than the records', checked from the compact range stored before it.
    lying = node_keys.checkpoint("node-a", "node-a/0", [*hashes[: RECORDS - 2], "00" * 32])
    ack = await stream.ship("node-a/0", [], [lying])
    assert ack.error.code == "DATA_LOSS"
    assert f"the stored records 1..{RECORDS - 1} make root" in ack.error.message
