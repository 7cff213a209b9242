"""The node's shipper against a real control plane: it resumes from its persisted cursor,
and without one it resends everything, which the store takes as duplicates; a checkpoint
signed after its records were sent still reaches the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dataplane.evidence import checkpoint, segments
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.shipper import Cursor, EvidenceShipper, cursor_path, read_cursor
from dataplane.identity import IdentityFiles
from signalbox.api.evidence.v1 import evidence_pb2
from signalbox.tls import ClientTls
from tests.controlplane.evidence.conftest import new_dir
from tests.controlplane.evidence.test_ship import write_records
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually


@contextlib.asynccontextmanager
async def _running(shipper: EvidenceShipper) -> AsyncIterator[EvidenceShipper]:
    task = asyncio.create_task(shipper.run())
    try:
        yield shipper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _ship_all(shipper: EvidenceShipper, head: int) -> None:
    async with _running(shipper):
        await eventually(lambda: shipper.status.shipped_seq == head, message=f"seq {head} acknowledged")


def _shippers(
    plane: RunningControlPlane, log_file: Path, node: str, tls: ClientTls, **options: Any
) -> Callable[[], EvidenceShipper]:
    """Makes fresh shippers of ``node``'s log to ``plane`` (each starts from the cursor file)."""
    return lambda: EvidenceShipper(
        plane.node_address, log_file, node_id=node, tls=tls, backoff=lambda n: 0.05, **options
    )


def _stored(plane: RunningControlPlane) -> int:
    return int(sql_rows(plane.database_url, "SELECT count(*) FROM evidence_records")[0][0])


async def test_the_shipper_resumes_from_its_cursor(
    evidence_plane: RunningControlPlane, private_tmp: Path
) -> None:
    directory = new_dir(private_tmp, "shipper-")
    tls = await evidence_plane.enroll("node-s", directory)
    log_file = log_path(directory, "node-s")

    shipper = _shippers(evidence_plane, log_file, "node-s", tls, batch_records=7)

    await write_records(directory, "node-s", 30)
    await _ship_all(shipper(), 30)
    cursor_file = cursor_path(log_file, "node-s/0")
    assert read_cursor(cursor_file).offset == log_file.stat().st_size
    assert cursor_file.stat().st_mode & 0o777 == 0o600

    await write_records(directory, "node-s", 20)
    again = shipper()
    assert again.status.shipped_seq == 30  # read back from the cursor file
    await _ship_all(again, 50)
    assert _stored(evidence_plane) == 50

    cursor_file.unlink()  # lost: everything is resent, nothing is stored twice
    await _ship_all(shipper(), 50)
    assert _stored(evidence_plane) == 50
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

    shipper = _shippers(evidence_plane, log_file, "node-p", tls)

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
        ("deep", b"[" * 3000 + b"]" * 3000),
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

    shipper = _shippers(evidence_plane, log_file, node, tls)

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


@pytest.mark.parametrize("name", ["beyond-the-end", "inside-a-line", "after-another-record", "end-as-seq-0"])
async def test_a_cursor_whose_offset_is_not_after_its_seq_is_found_again(
    evidence_plane: RunningControlPlane, private_tmp: Path, name: str
) -> None:
    # The cursor reads (seq, offset, segment are numbers) but its offset is not the end of its
    # seq: edited, or a mix of two cursors. Shipping must still take every record, once.
    directory = new_dir(private_tmp, "shipper-offset-")
    node = f"node-offset-{name}"
    tls = await evidence_plane.enroll(node, directory)
    log_file = log_path(directory, node)
    await write_records(directory, node, 12)
    shipper = _shippers(evidence_plane, log_file, node, tls)
    if name == "after-another-record":
        await _ship_all(shipper(), 12)
        await write_records(directory, node, 3)
    seq, offset = {
        "beyond-the-end": (0, 10**9),
        "inside-a-line": (0, 7),
        "after-another-record": (12, 0),
        "end-as-seq-0": (0, log_file.stat().st_size),
    }[name]
    cursor_file = cursor_path(log_file, f"{node}/0")
    cursor_file.write_bytes(b'{"seq": %d, "offset": %d, "segment": 1}' % (seq, offset))
    head = 15 if name == "after-another-record" else 12
    await _ship_all(shipper(), head)
    stored = sql_rows(
        evidence_plane.database_url,
        f"SELECT count(*), count(DISTINCT seq) FROM evidence_records WHERE node_id = '{node}'",
    )
    assert tuple(stored[0]) == (head, head)
    # Back where it belongs: the next round reads from the end, not the same records again.
    assert read_cursor(cursor_file) == Cursor(head, log_file.stat().st_size, 1)


async def test_a_checkpoint_signed_after_its_records_were_shipped_is_shipped_alone(
    database_url: str, private_tmp: Path
) -> None:
    """The log signs on its own clock, so its last checkpoint often comes after the shipper
    sent every record it covers; with no more traffic it must still go, or the newest
    records of a quiet node are never proven (an export leaves them out). Signed by the
    node's certified key and checked as in production."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane:
        await _late_checkpoints(plane, private_tmp)


async def _late_checkpoints(evidence_plane: RunningControlPlane, private_tmp: Path) -> None:
    directory = new_dir(private_tmp, "shipper-late-")
    tls = await evidence_plane.enroll("node-l", directory)
    log_file = log_path(directory, "node-l")

    def held() -> list[tuple[object, ...]]:
        return [
            tuple(row)
            for row in sql_rows(
                evidence_plane.database_url,
                "SELECT tree_size, root_matches FROM evidence_checkpoints WHERE chain_id = 'node-l/0' "
                "ORDER BY tree_size",
            )
        ]

    shipper = _shippers(evidence_plane, log_file, "node-l", tls, interval=0.05)

    await write_records(directory, "node-l", 12)  # unsigned: no checkpoint yet
    async with _running(shipper()) as running:
        await eventually(lambda: running.status.shipped_seq == 12, message="seq 12 acknowledged")
        assert held() == []
        async with EvidenceLog(
            log_file,
            "node-l",
            signer=IdentityFiles(directory).private_key(),
            checkpoint_records=10**9,
            checkpoint_interval=3600,
        ) as log:
            assert await log.checkpoint()  # of the 12 the control plane already holds
            await eventually(lambda: held() == [(12, True)], message="the late checkpoint stored")
            for i in range(5):
                log.append({"ts": time.time(), "correlation_id": f"late-{i}", "tenant_id": "acme"})
        # Closing signed one of 17; it goes with or after those records, whichever comes last.
        await eventually(lambda: held() == [(12, True), (17, True)], message="the closing checkpoint stored")
        await eventually(lambda: running.status.proven_seq == 17, message="the shipper to see it taken")
        assert running.status.shipped_seq == 17
    assert _stored(evidence_plane) == 17

    # A restarted shipper knows nothing of what was taken: it offers the newest again, which
    # the control plane holds already; nothing is stored twice and nothing is refused.
    async with _running(shipper()) as again:
        await eventually(lambda: again.status.proven_seq == 17, message="the newest checkpoint offered again")
        assert again.status.failures == 0
    assert held() == [(12, True), (17, True)]
    assert _stored(evidence_plane) == 17


async def test_a_checkpoint_the_control_plane_refuses_does_not_hold_back_the_records(
    database_url: str, private_tmp: Path
) -> None:
    """A checkpoint the control plane will never take (here signed by a key that is not the
    node's) is refused with its batch; offered again it would hold back those records
    forever. Dropped, the records go with the node's genuine checkpoint of them."""
    async with running_control_plane(cp_settings(database_url, private_tmp)) as plane:
        directory = new_dir(private_tmp, "shipper-refused-")
        tls = await plane.enroll("node-r", directory)
        log_file = log_path(directory, "node-r")
        async with EvidenceLog(
            log_file, "node-r", signer=IdentityFiles(directory).private_key(), checkpoint_interval=3600
        ) as log:
            for i in range(5):
                log.append({"ts": time.time(), "correlation_id": f"refused-{i}", "tenant_id": "acme"})
        notes = checkpoint.checkpoints_path(log_file)
        (genuine,) = checkpoint.read_notes(notes)
        root = checkpoint.parse(genuine).root
        forged = checkpoint.sign(
            ec.generate_private_key(ec.SECP256R1()), "node-r/0", 5, root, int(time.time())
        )
        with notes.open("ab") as f:
            f.write(forged + b"\n")  # the newest: offered first

        async with _running(_shippers(plane, log_file, "node-r", tls, interval=0.05)()) as shipper:
            await eventually(
                lambda: (shipper.status.shipped_seq, shipper.status.proven_seq) == (5, 5),
                message="the records and the genuine checkpoint taken",
            )
        assert "signature" in shipper.status.last_error
        assert sql_rows(
            plane.database_url,
            "SELECT tree_size, root_matches FROM evidence_checkpoints WHERE chain_id = 'node-r/0'",
        ) == [(5, True)]
        assert _stored(plane) == 5


async def test_a_stop_that_lands_as_an_ack_arrives_still_stops_the_shipper(private_tmp: Path) -> None:
    """The cancel and the ACK in one loop turn: on Python 3.11 ``asyncio.wait_for`` returned
    the ACK and dropped the cancel, so a stopping node's shipper ran on and the stop waited
    for it forever. The stream is a stand-in here: only a callback inside the loop can put
    the two in one turn."""
    directory = new_dir(private_tmp, "shipper-race-")
    shipper = EvidenceShipper(
        "127.0.0.1:9",
        log_path(directory, "node-r"),
        node_id="node-r",
        tls=ClientTls(),
        backoff=lambda n: 0.05,
    )
    loop = asyncio.get_running_loop()
    ack: asyncio.Future[evidence_pb2.ShipAck] = loop.create_future()

    class Stream:
        def read(self) -> asyncio.Future[evidence_pb2.ShipAck]:
            return ack

    answering = asyncio.create_task(shipper._answer(Stream(), [], Cursor()))
    coro: Any = answering.get_coro()
    await eventually(lambda: coro.cr_await is not None, message="the shipper waiting for the ACK")

    def both() -> None:
        ack.set_result(evidence_pb2.ShipAck(chain_id="node-r/0", head_seq=0))
        answering.cancel()

    loop.call_soon(both)
    with pytest.raises(asyncio.CancelledError):
        await answering
