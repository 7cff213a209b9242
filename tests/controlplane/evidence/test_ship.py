"""EvidenceService.Ship over the real node port (mutual TLS, enrolled node certificates):
ACK after commit, replays, tampering, gaps, reordering, insertions, other nodes' chains,
checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from controlplane.api.evidence import MAX_STREAMS_PER_NODE
from controlplane.connections import MAX_CONCURRENT_STREAMS
from controlplane.evidence.ingest import POOL_MIN_LINES
from dataplane.evidence.log import log_path
from dataplane.evidence.records import HASH_MEMBER_START, seal, stored_line
from dataplane.identity import IdentityFiles
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import TIMEOUT, NodeKeys, Stream, new_dir, rehash, write_records
from tests.fixtures.postgres import RunningControlPlane, sql_rows


def stored(evidence_plane: RunningControlPlane, chain: str = "node-a/0") -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in sql_rows(
            evidence_plane.database_url,
            f"SELECT seq, correlation_id, tenant_id, api_key_id, model, outcome FROM evidence_records "
            f"WHERE chain_id = '{chain}' ORDER BY seq",
        )
    ]


def chain_state(evidence_plane: RunningControlPlane) -> tuple[Any, ...]:
    rows = sql_rows(evidence_plane.database_url, "SELECT head_seq, state, alarm FROM evidence_chains")
    return tuple(rows[0])


async def test_a_batch_is_stored_then_acknowledged_and_a_replay_is_idempotent(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 10)
    ack = await stream.ship("node-a/0", lines)
    assert (ack.head_seq, ack.stored, ack.duplicates, ack.HasField("error")) == (10, 10, 0, False)
    rows = stored(evidence_plane)
    assert [r[0] for r in rows] == list(range(1, 11))
    assert rows[1] == (2, "corr-1", "acme", "key-1", "small", "PERMISSION_DENIED")
    # The exact bytes are kept: they still hash to the record's hash.
    body = sql_rows(evidence_plane.database_url, "SELECT body FROM evidence_records WHERE seq = 3")[0][0]
    assert bytes(body) + b"\n" == lines[2]
    # The binary COPY row holds the record's time to the microsecond and its raw digests.
    record = json.loads(lines[2])
    ts, digest, prev = sql_rows(
        evidence_plane.database_url,
        "SELECT ts, hash, prev_hash FROM evidence_records WHERE seq = 3",
    )[0]
    assert ts == datetime.fromtimestamp(record["ts"], UTC)
    assert (bytes(digest).hex(), bytes(prev).hex()) == (record["hash"], record["prev_hash"])

    again = await stream.ship("node-a/0", lines)
    assert (again.head_seq, again.stored, again.duplicates, again.HasField("error")) == (10, 0, 10, False)
    overlap = await stream.ship("node-a/0", lines[5:] + (await write_records(directory, "node-a", 2))[10:])
    assert (overlap.head_seq, overlap.stored, overlap.duplicates) == (12, 2, 5)
    assert len(stored(evidence_plane)) == 12
    assert chain_state(evidence_plane)[:2] == (12, "ok")


async def test_a_stored_record_arriving_changed_is_a_tamper_alarm_naming_chain_and_seq(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 5)
    assert (await stream.ship("node-a/0", lines)).head_seq == 5
    forged = rehash({**json.loads(lines[2]), "tenant_id": "someone-else"})
    lines[2] = seal(forged)
    ack = await stream.ship("node-a/0", lines)
    assert ack.error.code == "DATA_LOSS"
    assert ack.error.seq == 3
    assert "chain 'node-a/0': record seq 3 (line 3 of the batch): stored with hash" in ack.error.message
    assert ack.head_seq == 5
    alarms = sql_rows(evidence_plane.database_url, "SELECT chain_id, seq, kind, arrived FROM evidence_alarms")
    assert [tuple(a) for a in alarms] == [("node-a/0", 3, "tamper", forged["hash"])]
    head, state, alarm = chain_state(evidence_plane)
    assert (head, state) == (5, "tampered")
    assert "record seq 3" in alarm
    # Digests and ids only: nothing of the record's content in the alarm.
    assert "someone-else" not in str(alarms) + alarm
    # The same tampered batch again: refused again, alarmed once.
    assert (await stream.ship("node-a/0", lines)).error.code == "DATA_LOSS"
    assert len(sql_rows(evidence_plane.database_url, "SELECT 1 FROM evidence_alarms")) == 1


@pytest.mark.parametrize("damage", ["edited", "removed", "reordered", "inserted"])
async def test_a_damaged_batch_is_refused_from_the_record_it_names(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], damage: str
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 8)
    if damage == "edited":  # content changed, hash left as it was
        record = json.loads(lines[4])
        record["outcome"] = {"code": "OK"} if record["outcome"]["code"] != "OK" else {"code": "DENIED"}
        lines[4] = json.dumps(record).encode() + b"\n"
        expected = ("FAILED_PRECONDITION", 5, "record seq 5 (line 5 of the batch): hash does not match")
    elif damage == "removed":
        del lines[4]
        expected = ("FAILED_PRECONDITION", 6, "record seq 6 (line 5 of the batch): gap, expected seq 5")
    elif damage == "reordered":
        lines[4], lines[5] = lines[5], lines[4]
        expected = ("FAILED_PRECONDITION", 6, "record seq 6 (line 5 of the batch): gap, expected seq 5")
    else:  # a well-formed record claiming seq 5 (linked to seq 4) slipped in after seq 5
        intruder = rehash({**json.loads(lines[4]), "record_id": "f" * 32, "correlation_id": "forged"})
        lines.insert(5, seal(intruder))
        expected = ("FAILED_PRECONDITION", 5, "record seq 5 (line 6 of the batch): out of order")
    ack = await stream.ship("node-a/0", lines)
    code, seq, message = expected
    assert (ack.error.code, ack.error.seq) == (code, seq), ack.error.message
    assert message in ack.error.message
    # What came before the damage verified on its own: stored and acknowledged.
    assert ack.head_seq == len(stored(evidence_plane))
    assert "forged" not in {r[1] for r in stored(evidence_plane)}
    # The node resends the real records: the chain continues from the ACK.
    good = log_path(directory, "node-a").read_bytes().splitlines(keepends=True)
    ack = await stream.ship("node-a/0", good[ack.head_seq :])
    assert (ack.head_seq, ack.HasField("error")) == (8, False)
    assert [r[1] for r in stored(evidence_plane)] == [f"corr-{i}" for i in range(8)]
    assert chain_state(evidence_plane)[1] == "ok"


async def test_another_nodes_chain_is_permission_denied(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], private_tmp: Path
) -> None:
    stream, _ = node
    other = await write_records(new_dir(private_tmp, "evidence-other-"), "node-b", 3)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stream.ship("node-b/0", other)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "chain 'node-b/0' is not a chain of node 'node-a'" in (refused.value.details() or "")
    assert sql_rows(evidence_plane.database_url, "SELECT 1 FROM evidence_records") == []


async def test_records_of_another_node_inside_an_own_chain_are_refused(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], private_tmp: Path
) -> None:
    stream, _ = node
    other = await write_records(new_dir(private_tmp, "evidence-other-"), "node-b", 3)
    ack = await stream.ship("node-a/0", other)
    assert ack.error.code == "INVALID_ARGUMENT"
    assert "record seq 1 (line 1 of the batch): node_id is not 'node-a'" in ack.error.message


async def test_hostile_batches_get_precise_bounded_errors(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    stream, directory = node
    ack = await stream.ship("node-a/0", [b"not json\n"])
    assert ack.error.message == "chain 'node-a/0': line 1 of the batch: not a JSON record"
    ack = await stream.ship("node-a/0", [b"x" * (64 * 1024 + 1)])
    assert "line 1 of the batch: 65537 bytes, at most 65536" in ack.error.message
    ack = await stream.ship("node-a/0", [b"{}"] * 10_001)
    assert ack.error.message == "records: 10001 in one batch, at most 10000"
    nul = seal({**json.loads((await write_records(directory, "node-a", 1))[0]), "record_id": "a\x00b"})
    ack = await stream.ship("node-a/0", [nul])
    assert ack.error.message == (
        "chain 'node-a/0': record seq 1 (line 1 of the batch): record_id must be 1..64 characters without NUL"
    )
    ack = await stream.ship("node-a/x", [])
    assert ack.error.message.startswith("chain_id: must be <node id>/<worker number>")
    assert sql_rows(evidence_plane.database_url, "SELECT 1 FROM evidence_records") == []
    # The stream (and the control plane) keep serving.
    assert (await stream.ship("node-a/0", [])).head_seq == 0


async def test_a_record_nested_deeper_than_the_parsers_go_is_refused_by_name(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    # Valid JSON, 10 KB, its hash over its own bytes: a member nested 5000 deep. A parser
    # without a depth limit of its own runs out of stack on it.
    stream, directory = node
    lines = await write_records(directory, "node-a", 2)
    prefix = lines[1][: lines[1].rindex(HASH_MEMBER_START)]
    body = prefix + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    deep = stored_line(body, hashlib.sha256(body).hexdigest())
    ack = await stream.ship("node-a/0", [lines[0], deep])
    assert (ack.head_seq, ack.error.code, ack.error.seq) == (1, "INVALID_ARGUMENT", 0)
    assert ack.error.message == "chain 'node-a/0': line 2 of the batch: not a JSON record"
    assert [r[0] for r in stored(evidence_plane)] == [1]
    # Refused, not "could not be stored now; resend": the stream goes on, the real record is taken.
    assert (await stream.ship("node-a/0", lines[1:])).head_seq == 2


async def test_checkpoints_are_checked_against_the_stored_records(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], node_keys: NodeKeys
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 9)
    hashes = [json.loads(line)["hash"] for line in lines]
    good = node_keys.checkpoint("node-a", "node-a/0", hashes[:7])
    ack = await stream.ship("node-a/0", lines, [good])
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (9, 1, False)
    # An earlier size, checked against the records read back; a resent note is held once.
    older = node_keys.checkpoint("node-a", "node-a/0", hashes[:3])
    assert (await stream.ship("node-a/0", [], [older, good])).checkpoints == 1
    rows = sql_rows(
        evidence_plane.database_url, "SELECT tree_size, root_matches FROM evidence_checkpoints ORDER BY 1"
    )
    assert [tuple(r) for r in rows] == [(3, True), (7, True)]

    lying = node_keys.checkpoint("node-a", "node-a/0", hashes[:9], root=b"\x01" * 32)
    ack = await stream.ship("node-a/0", [], [lying])
    assert ack.error.code == "DATA_LOSS"
    assert (
        "checkpoint 1 (size 9, root 0101010101010101…): the stored records 1..9 make root"
        in ack.error.message
    )
    assert chain_state(evidence_plane)[1] == "tampered"
    kinds = [r[0] for r in sql_rows(evidence_plane.database_url, "SELECT kind FROM evidence_alarms")]
    assert kinds == ["checkpoint_mismatch"]

    ahead = node_keys.checkpoint("node-a", "node-a/0", [*hashes, "00" * 32])
    ack = await stream.ship("node-a/0", [], [ahead])
    assert "only records 1..9 are stored" in ack.error.message

    unsigned = good.replace(good.split("\n\n")[1], "\u2014 node-a AAAA\n")
    ack = await stream.ship("node-a/0", [], [unsigned])
    assert ack.error.code == "INVALID_ARGUMENT"
    assert "checkpoint 1 (size 7" in ack.error.message
    assert "signature: does not verify" in ack.error.message


async def test_a_large_batch_is_verified_in_a_worker_process_with_the_same_answers(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 700)
    assert len(lines) >= POOL_MIN_LINES
    record = json.loads(lines[399])
    record["tenant_id"] = "edited"
    edited = [*lines[:399], json.dumps(record).encode() + b"\n", *lines[400:]]
    ack = await stream.ship("node-a/0", edited)
    assert (ack.head_seq, ack.error.code, ack.error.seq) == (399, "FAILED_PRECONDITION", 400)
    assert "record seq 400 (line 400 of the batch): hash does not match" in ack.error.message
    ack = await stream.ship("node-a/0", lines)
    assert (ack.head_seq, ack.stored, ack.duplicates, ack.HasField("error")) == (700, 301, 399, False)
    assert [r[0] for r in stored(evidence_plane)] == list(range(1, 701))


async def test_ingest_makes_the_months_partition_and_it_is_append_only_too(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 3)
    assert (await stream.ship("node-a/0", lines)).head_seq == 3
    month = datetime.fromtimestamp(json.loads(lines[0])["ts"], UTC)
    partition = f"evidence_records_y{month.year:04d}m{month.month:02d}"
    rows = sql_rows(
        evidence_plane.database_url,
        "SELECT tableoid::regclass::text, count(*) FROM evidence_records GROUP BY 1",
    )
    assert [tuple(r) for r in rows] == [(partition, 3)]
    engine = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        for sql in (
            f"UPDATE {partition} SET outcome = 'X'",
            f"DELETE FROM {partition}",
            f"TRUNCATE {partition}",
        ):
            with pytest.raises(sa.exc.ProgrammingError) as refused, engine.begin() as conn:
                conn.exec_driver_sql(sql)
            assert f"evidence is append-only: {sql.split()[0]} on {partition}" in str(refused.value)
    finally:
        engine.dispose()


async def test_records_dated_far_ahead_are_stored_at_receipt_without_a_partition_per_month(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    # ts is the node's word: a partition per month it names up to the year 9998 would let one
    # node bloat the catalog every query on the records plans over; DEFAULT, where they went
    # next, is never dropped by retention. Dated past a day after receipt, they are stored
    # at their receipt.
    stream, directory = node
    lines = await write_records(directory, "node-a", 4)
    records, prev = [], "0" * 64
    for record, year in zip((json.loads(line) for line in lines), (3000, 4000, 5000, None), strict=True):
        ts = datetime(year, 1, 2, tzinfo=UTC).timestamp() if year else record["ts"]
        records.append(rehash({**record, "ts": ts, "prev_hash": prev}))
        prev = records[-1]["hash"]
    ack = await stream.ship("node-a/0", [seal(r) for r in records])
    assert (ack.head_seq, ack.HasField("error")) == (4, False)
    rows = sql_rows(
        evidence_plane.database_url,
        "SELECT seq, tableoid::regclass::text FROM evidence_records WHERE chain_id = 'node-a/0' ORDER BY seq",
    )
    now = datetime.fromtimestamp(records[3]["ts"], UTC)
    assert [tuple(r) for r in rows] == [
        (seq, f"evidence_records_y{now.year:04d}m{now.month:02d}") for seq in (1, 2, 3, 4)
    ]
    made = sql_rows(
        evidence_plane.database_url,
        "SELECT relname FROM pg_class WHERE relname ~ '^evidence_records_y[3-5]000' ORDER BY 1",
    )
    assert made == []


async def test_a_record_of_a_month_already_in_the_default_partition_stays_there(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], private_tmp: Path
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 2)
    # A record of 2024-05 that reached DEFAULT before any 2024-05 partition existed (e.g. the
    # partition could not be made): the month stays in DEFAULT, nothing is refused.
    engine = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO evidence_records_default (chain_id, seq, ts, record_id, hash, prev_hash, node_id, "
                "correlation_id, tenant_id, api_key_id, model, outcome, body) VALUES ('other/0', 1, "
                "'2024-05-02T00:00:00Z', 'r', '\\x00', '\\x00', 'other', '', '', '', '', '', '\\x00')"
            )
    finally:
        engine.dispose()
    future = [json.loads(line) for line in lines]
    future[0] = {**future[0], "ts": datetime(2024, 5, 3, tzinfo=UTC).timestamp()}
    future[0] = rehash(future[0])
    future[1] = rehash({**future[1], "prev_hash": future[0]["hash"]})
    ack = await stream.ship("node-a/0", [seal(r) for r in future])
    assert (ack.head_seq, ack.HasField("error")) == (2, False)
    rows = sql_rows(
        evidence_plane.database_url,
        "SELECT seq, tableoid::regclass::text FROM evidence_records WHERE chain_id = 'node-a/0' ORDER BY seq",
    )
    month = datetime.fromtimestamp(future[1]["ts"], UTC)
    assert [tuple(r) for r in rows] == [
        (1, "evidence_records_default"),
        (2, f"evidence_records_y{month.year:04d}m{month.month:02d}"),
    ]


async def test_a_database_failure_ends_the_stream_unavailable_and_the_resend_is_stored(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 4)
    engine = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:  # the store is unusable for a moment
            conn.exec_driver_sql("ALTER TABLE evidence_chains RENAME TO evidence_chains_away")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stream.ship("node-a/0", lines)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == "evidence could not be stored now; resend"
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE evidence_chains_away RENAME TO evidence_chains")
    finally:
        engine.dispose()
    again = Stream(stream.channel)  # the node reconnects
    try:
        ack = await again.ship("node-a/0", lines)
    finally:
        again.close()
    assert (ack.head_seq, ack.stored, ack.HasField("error")) == (4, 4, False)


async def test_a_certificate_issued_before_its_pem_was_kept_gets_it_from_its_node(
    evidence_plane: RunningControlPlane, private_tmp: Path
) -> None:
    """Certificates issued before migration 0015 have no PEM in the store, so packs could not
    carry them: the node presents it on its next call, and its fingerprint vouches for it."""
    directory = new_dir(private_tmp, "evidence-pem-")
    tls = await evidence_plane.enroll("node-pem", directory)
    select = "SELECT certificate_pem FROM node_certificates WHERE node_id = 'node-pem'"
    (issued,) = sql_rows(evidence_plane.database_url, select)[0]
    assert issued.startswith("-----BEGIN CERTIFICATE-----")
    engine = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE node_certificates SET certificate_pem = '' WHERE node_id = 'node-pem'"
            )
    finally:
        engine.dispose()
    async with aio_channel(evidence_plane.node_address, tls) as channel:
        stream = Stream(channel)
        ack = await stream.ship("node-pem/0", await write_records(directory, "node-pem", 2))
        stream.close()
    assert (ack.head_seq, ack.HasField("error")) == (2, False)
    assert sql_rows(evidence_plane.database_url, select)[0][0] == issued


async def test_a_nodes_streams_cannot_pile_up_a_newer_one_ends_the_oldest(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    # Each Ship stream a node opened stayed open, idle, holding memory here: one certified
    # node could open them without end.
    first, directory = node
    lines = await write_records(directory, "node-a", 2)
    assert (await first.ship("node-a/0", [])).head_seq == 0  # this stream is open here
    streams = [first]
    # One connection holds at most MAX_CONCURRENT_STREAMS calls (past it a call waits at
    # the client), so the node's streams are spread over connections of its own.
    tls = IdentityFiles(directory).client_tls()
    per_connection = MAX_CONCURRENT_STREAMS // 2
    async with contextlib.AsyncExitStack() as channels:
        for i in range(MAX_STREAMS_PER_NODE):
            if i % per_connection == 0:
                channel = await channels.enter_async_context(
                    aio_channel(evidence_plane.node_address, tls, [("grpc.use_local_subchannel_pool", 1)])
                )
            streams.append(Stream(channel))
            assert (await streams[-1].ship("node-a/0", [])).head_seq == 0
        assert await asyncio.wait_for(first.call.code(), TIMEOUT) == grpc.StatusCode.ABORTED
        assert "superseded by a newer evidence stream" in (await first.call.details() or "")
        # The others, the newest among them, still take batches.
        assert (await streams[1].ship("node-a/0", lines[:1])).head_seq == 1
        assert (await streams[-1].ship("node-a/0", lines[1:])).head_seq == 2
        for stream in streams[1:]:
            stream.close()
