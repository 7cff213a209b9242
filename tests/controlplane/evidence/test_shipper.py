"""The node's shipper against a real control plane: it resumes from its persisted cursor,
and without one it resends everything, which the store takes as duplicates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from dataplane.evidence import segments
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.shipper import Cursor, EvidenceShipper, cursor_path, read_cursor
from tests.controlplane.evidence.conftest import new_dir
from tests.controlplane.evidence.test_ship import write_records
from tests.fixtures.postgres import RunningControlPlane, sql_rows
from tests.helpers import eventually


async def _ship_all(shipper: EvidenceShipper, head: int) -> None:
    task = asyncio.create_task(shipper.run())
    try:
        await eventually(lambda: shipper.status.shipped_seq == head, message=f"seq {head} acknowledged")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_shipper_resumes_from_its_cursor(
    evidence_plane: RunningControlPlane, private_tmp: Path
) -> None:
    directory = new_dir(private_tmp, "shipper-")
    tls = await evidence_plane.enroll("node-s", directory)
    log_file = log_path(directory, "node-s")

    def shipper() -> EvidenceShipper:
        return EvidenceShipper(
            evidence_plane.node_address,
            log_file,
            node_id="node-s",
            tls=tls,
            backoff=lambda n: 0.05,
            batch_records=7,
        )

    def count() -> int:
        return int(sql_rows(evidence_plane.database_url, "SELECT count(*) FROM evidence_records")[0][0])

    await write_records(directory, "node-s", 30)
    await _ship_all(shipper(), 30)
    cursor_file = cursor_path(log_file, "node-s/0")
    assert read_cursor(cursor_file).offset == log_file.stat().st_size
    assert cursor_file.stat().st_mode & 0o777 == 0o600

    await write_records(directory, "node-s", 20)
    again = shipper()
    assert again.status.shipped_seq == 30  # read back from the cursor file
    await _ship_all(again, 50)
    assert count() == 50

    cursor_file.unlink()  # lost: everything is resent, nothing is stored twice
    await _ship_all(shipper(), 50)
    assert count() == 50
    assert read_cursor(cursor_file).seq == 50


async def test_a_cursor_lost_after_pruning_resumes_from_what_remains(
    evidence_plane: RunningControlPlane, private_tmp: Path
) -> None:
    directory = new_dir(private_tmp, "shipper-pruned-")
    tls = await evidence_plane.enroll("node-p", directory)
    log_file = log_path(directory, "node-p")
    async with EvidenceLog(log_file, "node-p", segment_bytes=1024) as log:
        for i in range(40):
            log.append(
                {"ts": time.time(), "correlation_id": f"corr-{i}", "tenant_id": "acme", "pad": "x" * 100}
            )

    def shipper() -> EvidenceShipper:
        return EvidenceShipper(
            evidence_plane.node_address, log_file, node_id="node-p", tls=tls, backoff=lambda n: 0.05
        )

    await _ship_all(shipper(), 40)
    base = segments.read_base(log_file)
    assert base is not None
    assert base.seq < 40
    assert segments.all_segments(log_file)[0].start == base.seq + 1  # the acknowledged rest is gone

    cursor_path(log_file, "node-p/0").unlink()
    await _ship_all(shipper(), 40)
    rows = sql_rows(
        evidence_plane.database_url,
        "SELECT count(*), count(DISTINCT seq) FROM evidence_records WHERE chain_id = 'node-p/0'",
    )
    assert tuple(rows[0]) == (40, 40)


async def test_only_fsynced_records_ship_and_full_batches_do_not_wait(
    evidence_plane: RunningControlPlane, private_tmp: Path
) -> None:
    directory = new_dir(private_tmp, "shipper-durable-")
    tls = await evidence_plane.enroll("node-d", directory)
    log_file = log_path(directory, "node-d")
    await write_records(directory, "node-d", 30)
    durable = [10]
    shipper = EvidenceShipper(
        evidence_plane.node_address,
        log_file,
        node_id="node-d",
        tls=tls,
        backoff=lambda n: 0.05,
        interval=0.05,
        durable_seq=lambda: durable[0],
    )
    task = asyncio.create_task(shipper.run())
    try:
        # One batch could hold all 30: stopping at exactly 10 is the durable bound at work.
        await eventually(lambda: shipper.status.shipped_seq >= 10, message="seq 10 acknowledged")
        assert shipper.status.shipped_seq == 10
        durable[0] = 30
        await eventually(lambda: shipper.status.shipped_seq == 30, message="seq 30 acknowledged")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # Full batches follow each other at once; only a partial one waits (an hour here).
    more = new_dir(private_tmp, "shipper-full-")
    tls = await evidence_plane.enroll("node-f", more)
    await write_records(more, "node-f", 30)
    await _ship_all(
        EvidenceShipper(
            evidence_plane.node_address,
            log_path(more, "node-f"),
            node_id="node-f",
            tls=tls,
            backoff=lambda n: 0.05,
            interval=3600,
            batch_records=7,
        ),
        30,
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty", b""),
        ("torn", b"{"),
        ("array", b"[]"),
        ("nooffset", b'{"seq": 3}'),
        ("nan", b'{"seq": "x", "offset": 0}'),
        ("negative", b'{"seq": -1, "offset": 0}'),
    ],
)
async def test_an_unreadable_cursor_resends_everything_as_duplicates(
    evidence_plane: RunningControlPlane, private_tmp: Path, name: str, content: bytes
) -> None:
    directory = new_dir(private_tmp, "shipper-torn-")
    node = f"node-cursor-{name}"
    tls = await evidence_plane.enroll(node, directory)
    log_file = log_path(directory, node)
    await write_records(directory, node, 12)

    def shipper() -> EvidenceShipper:
        return EvidenceShipper(
            evidence_plane.node_address, log_file, node_id=node, tls=tls, backoff=lambda n: 0.05
        )

    await _ship_all(shipper(), 12)
    cursor_file = cursor_path(log_file, f"{node}/0")
    cursor_file.write_bytes(content)  # what a power cut can leave of a cursor never fsynced
    assert read_cursor(cursor_file) == Cursor()
    await _ship_all(shipper(), 12)
    stored = sql_rows(
        evidence_plane.database_url, f"SELECT count(*) FROM evidence_records WHERE node_id = '{node}'"
    )
    assert stored[0][0] == 12
    assert read_cursor(cursor_file).seq == 12
