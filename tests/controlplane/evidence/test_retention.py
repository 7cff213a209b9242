"""Retention: old partitions dropped behind signed pruned-range statements, and what remains
still verifies (statement signatures, the link to the last pruned record, checkpoint roots
recomputed from the compact range and the remaining leaves); ingest continues the chains."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.db.session import create_engine, session_factory
from controlplane.errors import InvalidArgument
from controlplane.evidence.partitions import PartitionGone
from controlplane.evidence.retention import PRUNED_PAYLOAD_TYPE, verify_statement
from dataplane.evidence import cosignature
from dataplane.evidence.log import EvidenceLog, log_path
from dataplane.evidence.merkle import Tree
from dataplane.evidence.records import seal
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.tls import ClientTls, aio_channel
from tests.controlplane.conftest import Admin
from tests.controlplane.evidence.conftest import NodeKeys, Stream, new_dir, received_long_ago, rehash
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import RunningControlPlane, cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually

JAN, FEB = datetime(2025, 1, 15, tzinfo=UTC).timestamp(), datetime(2025, 2, 15, tzinfo=UTC).timestamp()


async def write_at(
    directory: Path, times: list[float], *, node_id: str = "node-a", tenant_id: str = "acme"
) -> list[bytes]:
    """Real node records of ``node_id`` at the given times; every line of its log so far."""
    async with EvidenceLog(log_path(directory, node_id), node_id) as log:
        for i, ts in enumerate(times):
            log.append({"ts": ts, "correlation_id": f"corr-{ts}-{i}", "tenant_id": tenant_id})
    return log_path(directory, node_id).read_bytes().splitlines(keepends=True)


async def ship_as(
    plane: RunningControlPlane, private_tmp: Path, node_id: str, times: list[float], *, tenant_id: str
) -> None:
    """Another node, enrolled: its records at ``times``, of ``tenant_id``, shipped."""
    directory = new_dir(private_tmp, f"evidence-{node_id}-")
    async with aio_channel(plane.node_address, await plane.enroll(node_id, directory)) as channel:
        stream = Stream(channel)
        lines = await write_at(directory, times, node_id=node_id, tenant_id=tenant_id)
        assert (await stream.ship(f"{node_id}/0", lines)).head_seq == len(times)
        stream.close()


def public_keys(plane: RunningControlPlane) -> dict[str, Ed25519PublicKey]:
    rows = sql_rows(plane.database_url, "SELECT key_id, public_key FROM signing_keys")
    return {key_id: Ed25519PublicKey.from_public_bytes(bytes(raw)) for key_id, raw in rows}


def partitions(plane: RunningControlPlane) -> list[str]:
    rows = sql_rows(
        plane.database_url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'evidence_records'::regclass ORDER BY 1",
    )
    return [name for (name,) in rows]


async def admin_cli(plane: RunningControlPlane, *args: str, token: str = "") -> tuple[int, str, str]:
    return await _signalbox("admin", "--target", plane.address, "--token", token or plane.token, *args)


async def test_pruning_leaves_signed_statements_and_the_rest_still_verifies(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], node_keys: NodeKeys
) -> None:
    stream, directory = node
    now = datetime.now(UTC).timestamp()
    lines = await write_at(directory, [JAN] * 3 + [FEB] * 3 + [now] * 2)
    hashes = [json.loads(line)["hash"] for line in lines]
    at_8 = node_keys.checkpoint("node-a", "node-a/0", hashes)
    ack = await stream.ship("node-a/0", lines, [at_8])
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (8, 1, False)
    assert "evidence_records_y2025m01" in partitions(evidence_plane)
    received_long_ago(evidence_plane.database_url)

    # Only a platform admin prunes.
    assert evidence_plane.cp.admin is not None
    _, viewer = await evidence_plane.cp.admin.create_token("auditor", role="auditor")
    code, _, err = await admin_cli(
        evidence_plane, "evidence", "prune", "--before", "2025-03-01", token=viewer
    )
    assert code != 0
    assert "may not call PruneEvidence" in err
    assert "evidence_records_y2025m01" in partitions(evidence_plane)

    code, _, err = await admin_cli(evidence_plane, "evidence", "prune", "--before", "2999-01-01")
    assert code != 0
    assert "before: must not be in the future" in err
    code, out, err = await admin_cli(evidence_plane, "--json", "evidence", "prune", "--before", "2025-03-01")
    assert code == 0, err
    result = json.loads(out)
    assert result["partitions"] == ["evidence_records_y2025m01", "evidence_records_y2025m02"]
    (pruned,) = result["ranges"]
    assert (pruned["chain_id"], pruned["first_seq"], pruned["last_seq"]) == ("node-a/0", "1", "6")
    assert not {"evidence_records_y2025m01", "evidence_records_y2025m02"} & set(partitions(evidence_plane))

    # The statement verifies with the control plane's public key, and only with it.
    envelope = sql_rows(evidence_plane.database_url, "SELECT statement FROM evidence_pruned_ranges")[0][0]
    statement = verify_statement(bytes(envelope), public_keys(evidence_plane))
    assert json.loads(bytes(envelope))["payloadType"] == PRUNED_PAYLOAD_TYPE
    assert (statement.first_seq, statement.last_seq, statement.last_hash.hex()) == (1, 6, hashes[5])
    # The covering checkpoint as stored: the node's note with the control plane's witness line.
    assert statement.checkpoint.startswith(at_8)
    assert cosignature.witnesses(statement.checkpoint.encode(), public_keys(evidence_plane))
    assert statement.pruned_before == datetime(2025, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="no signature by a trusted key"):
        verify_statement(
            bytes(envelope),
            {k: Ed25519PublicKey.from_public_bytes(b"\x01" * 32) for k in public_keys(evidence_plane)},
        )
    forged = json.loads(bytes(envelope))
    forged["payload"] = forged["payload"][:-8] + "AAAAAAA="
    with pytest.raises(ValueError, match="no signature by a trusted key"):
        verify_statement(json.dumps(forged).encode(), public_keys(evidence_plane))
    assert evidence_plane.cp.retention is not None
    assert (await evidence_plane.cp.retention.pruned_statement("node-a/0")) == statement
    assert await evidence_plane.cp.retention.pruned_statement("node-b/0") is None

    # What remains links to the statement's last hash, and the checkpoint's root is the
    # compact range of records 1..6 extended by the remaining leaves.
    remaining = sql_rows(
        evidence_plane.database_url, "SELECT seq, hash, prev_hash FROM evidence_records ORDER BY seq"
    )
    assert [seq for seq, _, _ in remaining] == [7, 8]
    assert bytes(remaining[0][2]) == statement.last_hash
    tree = statement.tree()
    for _, digest, _ in remaining:
        tree.append(bytes(digest))
    root = sql_rows(evidence_plane.database_url, "SELECT root_hash FROM evidence_checkpoints")[0][0]
    assert tree.root() == bytes(root)

    # A checkpoint offered again on its own, as a restarted node's shipper does, checks
    # against the chain's stored tree: the records left after pruning would not make its root.
    ack = await stream.ship("node-a/0", [], [at_8])
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (8, 0, False)
    # One that ends after the pruned prefix checks against its compact range and the records
    # after it; one that ends inside it has nothing left to prove: not stored, not refused.
    ack = await stream.ship("node-a/0", [], [node_keys.checkpoint("node-a", "node-a/0", hashes[:7])])
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (8, 1, False)
    ack = await stream.ship("node-a/0", [], [node_keys.checkpoint("node-a", "node-a/0", hashes[:5])])
    assert (ack.head_seq, ack.checkpoints, ack.HasField("error")) == (8, 0, False)
    assert sql_rows(evidence_plane.database_url, "SELECT count(*) FROM evidence_alarms") == [(0,)]
    assert sql_rows(
        evidence_plane.database_url, "SELECT tree_size, root_matches FROM evidence_checkpoints ORDER BY 1"
    ) == [(7, True), (8, True)]

    # Ingest continues the chain; a later checkpoint checks against the stored tree.
    lines = await write_at(directory, [now] * 2)
    hashes = [json.loads(line)["hash"] for line in lines]
    ack = await stream.ship("node-a/0", lines[8:], [node_keys.checkpoint("node-a", "node-a/0", hashes)])
    assert (ack.head_seq, ack.stored, ack.checkpoints, ack.HasField("error")) == (10, 2, 1, False)

    # Admins see where each chain's store begins; queries say what was pruned.
    code, out, err = await admin_cli(evidence_plane, "--json", "evidence", "chains")
    assert code == 0, err
    (chain,) = json.loads(out)["chains"]
    assert (chain["head_seq"], chain["pruned_through_seq"]) == ("10", "6")
    code, out, err = await admin_cli(evidence_plane, "evidence", "query", "--tenant", "acme")
    assert code == 0, err
    assert "chain node-a/0: records 1..6, older than 2025-03-01T00:00:00+00:00, were pruned" in err

    # A second prune with nothing before the time is a no-op; the statements stay append-only.
    code, out, err = await admin_cli(evidence_plane, "--json", "evidence", "prune", "--before", "2025-03-01")
    assert code == 0, err
    assert json.loads(out) == {}
    engine = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        for sql in ("DELETE FROM evidence_pruned_ranges", "UPDATE evidence_pruned_ranges SET last_seq = 0"):
            with (
                pytest.raises(sa.exc.ProgrammingError, match="evidence is append-only"),
                engine.begin() as conn,
            ):
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


async def test_a_statement_never_claims_a_record_still_stored_when_a_clock_stepped_back(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], private_tmp: Path
) -> None:
    """Record times are the node's word. node-a's clock was ahead (seqs 1-2 dated February)
    and then stepped back (seqs 3-4 dated January). Pruning January stated node-a's records
    1-4 dropped, while 1-2 stayed stored in February: a pack searched the chain from 5 and
    left them out although queries found them, and February's drop later removed them
    unstated. January is now kept back until February goes too: each statement states
    exactly the records dropped, and what remains still verifies against it."""
    stream, directory = node
    now = datetime.now(UTC).timestamp()
    lines = await write_at(directory, [FEB, FEB, JAN, JAN, now])
    assert (await stream.ship("node-a/0", lines)).head_seq == 5
    await ship_as(evidence_plane, private_tmp, "node-b", [JAN, FEB, now], tenant_id="globex")
    received_long_ago(evidence_plane.database_url)

    def stored() -> list[tuple[str, int]]:
        rows = sql_rows(
            evidence_plane.database_url, "SELECT chain_id, seq FROM evidence_records ORDER BY 1, 2"
        )
        return [(str(chain_id), int(seq)) for chain_id, seq in rows]

    def claimed() -> set[tuple[str, int]]:
        rows = sql_rows(
            evidence_plane.database_url, "SELECT chain_id, first_seq, last_seq FROM evidence_pruned_ranges"
        )
        return {(str(c), seq) for c, first, last in rows for seq in range(int(first), int(last) + 1)}

    code, out, err = await admin_cli(evidence_plane, "--json", "evidence", "prune", "--before", "2025-02-01")
    assert code == 0, err
    assert json.loads(out).get("partitions", []) == []
    assert not claimed() & set(stored())
    assert len(stored()) == 8

    code, out, err = await admin_cli(evidence_plane, "--json", "evidence", "prune", "--before", "2025-03-01")
    assert code == 0, err
    result = json.loads(out)
    assert result["partitions"] == ["evidence_records_y2025m01", "evidence_records_y2025m02"]
    assert sorted((r["chain_id"], r["first_seq"], r["last_seq"]) for r in result["ranges"]) == [
        ("node-a/0", "1", "4"),
        ("node-b/0", "1", "2"),
    ]
    assert stored() == [("node-a/0", 5), ("node-b/0", 3)]
    assert not claimed() & set(stored())
    statement = verify_statement(
        bytes(
            sql_rows(
                evidence_plane.database_url,
                "SELECT statement FROM evidence_pruned_ranges WHERE chain_id = 'node-a/0'",
            )[0][0]
        ),
        public_keys(evidence_plane),
    )
    hashes = [bytes.fromhex(json.loads(line)["hash"]) for line in lines]
    assert statement.last_hash == hashes[3]
    tree = statement.tree()
    tree.append(hashes[4])
    reference = Tree()
    for digest in hashes:
        reference.append(digest)
    assert tree.root() == reference.root()


async def test_a_record_dated_far_ahead_is_stored_at_its_receipt_not_kept_forever(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    """Partitioned by the node's word, a record dated 2099 went to the DEFAULT partition,
    which retention never drops: kept forever, whatever the retention setting. It is stored
    (partitioned, retained, found by time) at its receipt; its body keeps the node's time."""
    stream, directory = node
    now = datetime.now(UTC)
    future = datetime(2099, 6, 1, tzinfo=UTC).timestamp()
    soon = (now + timedelta(hours=1)).timestamp()  # a clock a little ahead keeps its time
    lines = await write_at(directory, [future, soon])
    assert (await stream.ship("node-a/0", lines)).head_seq == 2
    rows = sql_rows(
        evidence_plane.database_url,
        "SELECT seq, ts, tableoid::regclass::text, body FROM evidence_records ORDER BY seq",
    )
    month = f"evidence_records_y{now.year:04d}m{now.month:02d}"
    (seq1, ts1, where1, body1), (seq2, ts2, where2, _) = rows
    assert (seq1, where1) == (1, month)
    assert abs((ts1 - now).total_seconds()) < 60
    assert json.loads(bytes(body1))["ts"] == future  # the record itself is unchanged
    assert seq2 == 2
    assert ts2.timestamp() == pytest.approx(soon, abs=1e-3)
    assert where2.startswith("evidence_records_y")


async def test_records_dated_far_back_are_kept_the_retention_period_from_their_receipt(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], private_tmp: Path
) -> None:
    """A node whose clock is behind (or that ships late) dates its records months back: filed
    in those months' partitions, they were dropped by the next retention round, moments after
    they were received. A month is dropped only once every record in it was received before
    the cut-off: each is kept the retention period from its receipt at the earliest."""
    stream, directory = node
    behind = (datetime.now(UTC) - timedelta(days=90)).timestamp()
    lines = await write_at(directory, [JAN, behind, JAN])
    assert (await stream.ship("node-a/0", lines)).head_seq == 3
    await ship_as(evidence_plane, private_tmp, "node-b", [JAN], tenant_id="globex")
    retention = evidence_plane.cp.retention
    assert retention is not None
    result = await retention.prune_older_than(timedelta(days=30), datetime.now(UTC))
    assert (result.partitions, result.statements) == ([], [])
    code, out, err = await admin_cli(evidence_plane, "--json", "evidence", "prune", "--before", "2025-03-01")
    assert code == 0, err
    assert json.loads(out).get("partitions", []) == []
    stored = sql_rows(evidence_plane.database_url, "SELECT chain_id, seq FROM evidence_records ORDER BY 1, 2")
    assert stored == [("node-a/0", 1), ("node-a/0", 2), ("node-a/0", 3), ("node-b/0", 1)]
    assert await retention.pruned_statement("node-a/0") is None

    # Once they were received longer ago than the retention period, they go as usual.
    received_long_ago(evidence_plane.database_url)
    result = await retention.prune_older_than(timedelta(days=30), datetime.now(UTC))
    assert "evidence_records_y2025m01" in result.partitions
    statement = await retention.pruned_statement("node-a/0")
    assert statement is not None
    assert (statement.first_seq, statement.last_seq) == (1, 3)


async def test_the_retention_timer_prunes_what_is_older_than_the_setting(
    database_url: str, private_tmp: Path, node_keys: NodeKeys
) -> None:
    directory = new_dir(private_tmp, "evidence-timer-")
    old = (datetime.now(UTC) - timedelta(days=500)).timestamp()
    recent = (datetime.now(UTC) - timedelta(days=1)).timestamp()
    # Shipped first, to a control plane without the timer: a round that ran between ingest
    # making the old month's partition and filling it would drop it empty (its records then
    # land in the DEFAULT partition, which retention keeps).
    first = cp_settings(database_url, private_tmp)
    async with running_control_plane(first, verify_checkpoint_signature=node_keys.verify) as plane:
        tls = await plane.enroll("node-a", directory)
        async with aio_channel(plane.node_address, tls) as channel:
            stream = Stream(channel)
            assert (
                await stream.ship("node-a/0", await write_at(directory, [old, old, recent]))
            ).head_seq == 3
            stream.close()
    received_long_ago(database_url)
    # The same data dir (and so the same KEK): the database's signing key opens.
    settings = replace(first, evidence_retention_days=400.0, evidence_retention_interval=0.2)
    async with running_control_plane(settings, verify_checkpoint_signature=node_keys.verify) as plane:
        retention = plane.cp.retention
        assert retention is not None

        async def pruned() -> bool:
            statement = await retention.pruned_statement("node-a/0")
            return statement is not None and statement.last_seq == 2

        await eventually(pruned, timeout=30, message="the timer pruned the old month")
        assert [int(seq) for (seq,) in sql_rows(plane.database_url, "SELECT seq FROM evidence_records")] == [
            3
        ]


async def test_a_late_record_of_a_month_another_replica_pruned_gets_its_partition_back(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], node_keys: NodeKeys
) -> None:
    """This replica knows January's partition (it made it); another replica on the same
    database prunes January; a late January record then arrives here. It must land in a new
    January partition (which a later prune can drop), not in DEFAULT (which none can)."""
    stream, directory = node
    now = datetime.now(UTC).timestamp()
    lines = await write_at(directory, [JAN, JAN, now])
    assert (await stream.ship("node-a/0", lines)).head_seq == 3
    assert "evidence_records_y2025m01" in partitions(evidence_plane)
    received_long_ago(evidence_plane.database_url)

    replica = cp_settings(
        evidence_plane.database_url, evidence_plane.data_dir.parent, data_dir=evidence_plane.data_dir
    )
    async with running_control_plane(replica, verify_checkpoint_signature=node_keys.verify) as other:
        code, _, err = await admin_cli(other, "evidence", "prune", "--before", "2025-02-01")
        assert code == 0, err
    assert "evidence_records_y2025m01" not in partitions(evidence_plane)
    # What an ingest transaction checks under the shared lock, had the drop come after its
    # ensure: the partition is gone, so it rolls back and makes it again (``PartitionGone``).
    assert evidence_plane.cp.evidence is not None
    held = evidence_plane.cp.evidence.partitions
    engine = create_engine(evidence_plane.database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            with pytest.raises(PartitionGone, match="evidence_records_y2025m01"):
                await held.hold(session, {datetime.fromtimestamp(JAN, UTC)})
            await held.hold(session, {datetime.now(UTC)})  # this month: nothing to hold
    finally:
        await engine.dispose()

    lines = await write_at(directory, [JAN])
    # Resent with what was pruned (a node restored from a backup, say): seqs 1 and 2 are
    # gone from the store, and are duplicates, not a tamper alarm; 3 is stored, 4 is new.
    ack = await stream.ship("node-a/0", lines)
    assert (ack.head_seq, ack.stored, ack.duplicates, ack.HasField("error")) == (4, 1, 3, False), ack
    # The last pruned record's hash is kept (in the signed statement): another seq 2 is refused.
    forged = seal(rehash({**json.loads(lines[1]), "correlation_id": "forged"}))
    ack = await stream.ship("node-a/0", [forged])
    assert (ack.error.code, ack.error.seq) == ("DATA_LOSS", 2), ack
    assert "evidence_records_y2025m01" in partitions(evidence_plane)
    assert sql_rows(evidence_plane.database_url, "SELECT count(*) FROM evidence_records_default") == [(0,)]
    assert sql_rows(evidence_plane.database_url, "SELECT seq FROM evidence_records_y2025m01") == [(4,)]


async def test_records_left_in_the_default_partition_are_rehomed_and_pruned(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    """January's records sit in DEFAULT (where a control plane before the partition fix could
    leave a late month's records): prune moves them into a January partition of their own,
    states and drops it like any month, and the new DEFAULT is append-only like the old."""
    stream, directory = node
    now = datetime.now(UTC).timestamp()
    lines = await write_at(directory, [JAN, JAN, now])
    assert (await stream.ship("node-a/0", lines)).head_seq == 3
    engine = sa.create_engine(evidence_plane.database_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:  # the state such a control plane left behind
            conn.exec_driver_sql("ALTER TABLE evidence_records DETACH PARTITION evidence_records_y2025m01")
            conn.exec_driver_sql(
                "INSERT INTO evidence_records_default SELECT * FROM evidence_records_y2025m01"
            )
            conn.exec_driver_sql("DROP TABLE evidence_records_y2025m01")
        received_long_ago(evidence_plane.database_url)
        assert sql_rows(
            evidence_plane.database_url, "SELECT seq FROM evidence_records_default ORDER BY 1"
        ) == [
            (1,),
            (2,),
        ]

        code, out, err = await admin_cli(
            evidence_plane, "--json", "evidence", "prune", "--before", "2025-02-01"
        )
        assert code == 0, err
        result = json.loads(out)
        assert result["partitions"] == ["evidence_records_y2025m01"]
        (pruned,) = result["ranges"]
        assert (pruned["first_seq"], pruned["last_seq"]) == ("1", "2")
        assert sql_rows(evidence_plane.database_url, "SELECT count(*) FROM evidence_records_default") == [
            (0,)
        ]
        assert "evidence_records_default_rehomed" not in partitions(evidence_plane)
        assert [r[0] for r in sql_rows(evidence_plane.database_url, "SELECT seq FROM evidence_records")] == [
            3
        ]

        # The new DEFAULT refuses changes as the old one did (row trigger, TRUNCATE trigger):
        # a row of a month without a partition lands in it.
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO evidence_records (chain_id, seq, ts, record_id, hash, prev_hash, node_id, "
                "correlation_id, tenant_id, api_key_id, model, outcome, body) VALUES ('n9/0', 1, "
                "'2001-01-01T00:00:00Z', 'r1', '\\x01', '\\x00', 'n9', 'c1', 't1', 'k1', 'small', 'OK', '\\x7b7d')"
            )
        assert sql_rows(evidence_plane.database_url, "SELECT count(*) FROM evidence_records_default") == [
            (1,)
        ]
        for sql in (
            "DELETE FROM evidence_records_default",
            "UPDATE evidence_records_default SET outcome = 'X'",
            "TRUNCATE evidence_records_default",
        ):
            with pytest.raises(sa.exc.ProgrammingError, match="append-only"), engine.begin() as conn:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()
    # The chain goes on, and its rest still verifies against the statement.
    lines = await write_at(directory, [now])
    assert (await stream.ship("node-a/0", lines[-1:])).head_seq == 4


async def test_a_tenant_sees_pruned_ranges_of_its_own_records_chains_only(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path], private_tmp: Path
) -> None:
    """A tenant admin's QueryEvidence listed the pruned range of every chain of the fleet:
    other tenants' nodes' chain ids and last seqs (how many requests they served). It lists
    those of the chains its answer's records are on."""
    stream, directory = node
    async with aio_channel(evidence_plane.address, ClientTls()) as channel:
        admin = Admin(admin_pb2_grpc.AdminServiceStub(channel), evidence_plane.metadata)
        acme, globex = [
            (await admin.CreateTenant(admin_pb2.CreateTenantRequest(name=name))).id
            for name in ("acme", "globex")
        ]
        now = datetime.now(UTC).timestamp()
        lines = await write_at(directory, [JAN, now], tenant_id=acme)
        assert (await stream.ship("node-a/0", lines)).head_seq == 2
        await ship_as(evidence_plane, private_tmp, "node-b", [JAN, JAN, now], tenant_id=globex)
        received_long_ago(evidence_plane.database_url)
        await admin.PruneEvidence(admin_pb2.PruneEvidenceRequest(before=_timestamp(FEB)))
        everything = await admin.QueryEvidence(admin_pb2.QueryEvidenceRequest())
        assert sorted((p.chain_id, p.last_seq) for p in everything.pruned) == [
            ("node-a/0", 1),
            ("node-b/0", 2),
        ]
        token = (
            await admin.CreateAdminToken(
                admin_pb2.CreateAdminTokenRequest(name="acme-ops", role="tenant_admin", tenant="acme")
            )
        ).token
        found = await admin.with_token(token).QueryEvidence(admin_pb2.QueryEvidenceRequest())
        assert [(r.chain_id, r.seq) for r in found.records] == [("node-a/0", 2)]
        assert [(p.chain_id, p.last_seq) for p in found.pruned] == [("node-a/0", 1)]


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(seconds))
    return stamp


async def test_a_control_plane_clock_far_ahead_drops_no_recent_evidence(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    """The retention timer took its cut-off from the host's clock alone: a host whose clock
    stepped years ahead (a bad time source, a battery-backed clock read before NTP) dropped
    every month of evidence at once, for good. It now takes the earlier of the host's and the
    database's clock: one clock gone wrong drops nothing that is not old by the other."""
    stream, directory = node
    recent = (datetime.now(UTC) - timedelta(days=1)).timestamp()
    lines = await write_at(directory, [JAN, JAN, recent])
    assert (await stream.ship("node-a/0", lines)).head_seq == 3
    received_long_ago(evidence_plane.database_url)
    retention = evidence_plane.cp.retention
    assert retention is not None
    ahead = datetime.now(UTC) + timedelta(days=5 * 365)
    result = await retention.prune_older_than(timedelta(days=400), ahead)
    assert result.partitions == ["evidence_records_y2025m01"]
    statement = await retention.pruned_statement("node-a/0")
    assert statement is not None
    assert (statement.first_seq, statement.last_seq) == (1, 2)
    stored = sql_rows(evidence_plane.database_url, "SELECT seq FROM evidence_records ORDER BY seq")
    assert [int(seq) for (seq,) in stored] == [3]


async def test_a_prune_past_the_database_clock_is_refused_whatever_the_host_clock_says(
    evidence_plane: RunningControlPlane, node: tuple[Stream, Path]
) -> None:
    """A manual prune may not name a date in the future, or the month nodes still ship into
    is dropped; "future" was by the host's clock alone, which a clock stepped years ahead
    let through."""
    stream, directory = node
    lines = await write_at(directory, [datetime.now(UTC).timestamp()])
    assert (await stream.ship("node-a/0", lines)).head_seq == 1
    retention = evidence_plane.cp.retention
    assert retention is not None
    ahead = datetime.now(UTC) + timedelta(days=5 * 365)
    with pytest.raises(InvalidArgument, match="must not be in the future"):
        await retention.prune_until(datetime.now(UTC) + timedelta(days=62), ahead)
    stored = sql_rows(evidence_plane.database_url, "SELECT seq FROM evidence_records")
    assert [int(seq) for (seq,) in stored] == [1]
