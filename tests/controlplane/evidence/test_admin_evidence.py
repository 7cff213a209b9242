"""``signalbox admin evidence query`` and ``chains`` as real processes against a control plane
holding shipped records: filters, JSON and table output, a viewer may read, calls audited."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from controlplane.api.admin_evidence import EvidenceAdmin
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.tls import aio_channel
from tests.controlplane.evidence.conftest import NodeKeys, Stream, new_dir, write_records
from tests.controlplane.test_cli import _signalbox
from tests.fixtures.postgres import (
    RunningControlPlane,
    cp_settings,
    running_control_plane,
    sql_execute,
    sql_rows,
)


@pytest.fixture
async def shipped(evidence_plane: RunningControlPlane, node: tuple[Stream, Path]) -> RunningControlPlane:
    stream, directory = node
    lines = await write_records(directory, "node-a", 12)
    assert (await stream.ship("node-a/0", lines)).head_seq == 12
    return evidence_plane


async def test_query_filters_and_prints_json_or_a_table(shipped: RunningControlPlane) -> None:
    assert shipped.cp.admin is not None
    _, viewer = await shipped.cp.admin.create_token("auditor", role="auditor")
    base = ("admin", "--target", shipped.address, "--token", viewer)

    code, out, err = await _signalbox(*base, "--json", "evidence", "query", "--correlation-id", "corr-3")
    assert code == 0, err
    records = json.loads(out)["records"]
    assert [(r["chain_id"], r["seq"], r["tenant_id"], r["model"]) for r in records] == [
        ("node-a/0", "4", "acme", "small")
    ]

    code, out, err = await _signalbox(*base, "--json", "evidence", "query", "--outcome", "PERMISSION_DENIED")
    assert code == 0, err
    assert sorted(int(r["seq"]) for r in json.loads(out)["records"]) == [2, 4, 6, 8, 10, 12]

    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    code, out, err = await _signalbox(*base, "evidence", "query", "--since", since, "--limit", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["TIME", "CHAIN", "SEQ", "CORRELATION_ID"]
    # Newest first: the last three records.
    assert [line.split()[3] for line in lines if "node-a/0" in line] == ["12", "11", "10"]
    assert "more records match" in err

    code, out, err = await _signalbox(*base, "evidence", "query", "--until", "2000-01-01T00:00:00")
    assert code == 0, err
    assert "corr-" not in out

    code, _, err = await _signalbox(*base, "evidence", "query", "--limit", "5000")
    assert code != 0
    assert "limit: at most 1000" in err

    audited = sql_rows(
        shipped.database_url, "SELECT method, result FROM audit_log WHERE actor = 'admin:auditor'"
    )
    assert ("QueryEvidence", "OK") in {tuple(r) for r in audited}
    assert ("QueryEvidence", "INVALID_ARGUMENT") in {tuple(r) for r in audited}


async def test_chains_shows_head_state_alarms_and_how_far_checkpoints_prove(
    shipped: RunningControlPlane, node: tuple[Stream, Path], node_keys: NodeKeys
) -> None:
    stream, directory = node
    lines = await write_records(directory, "node-a", 3)
    hashes = [json.loads(line)["hash"] for line in lines]
    # Proven through 8 (the newest matching checkpoint), not 12 (the head), nor 5 (older).
    for size in (5, 8):
        ack = await stream.ship("node-a/0", [], [node_keys.checkpoint("node-a", "node-a/0", hashes[:size])])
        assert (ack.checkpoints, ack.HasField("error")) == (1, False)
    ack = await stream.ship("node-a/0", lines[13:])  # seq 13 missing: a gap
    assert ack.error.code == "FAILED_PRECONDITION"
    code, out, err = await _signalbox(
        "admin", "--target", shipped.address, "--token", shipped.token, "--json", "evidence", "chains"
    )
    assert code == 0, err
    (chain,) = json.loads(out)["chains"]
    assert (
        chain["chain_id"], chain["node_id"], chain["head_seq"], chain["proven_through_seq"], chain["state"],
        chain["alarms"],
    ) == ("node-a/0", "node-a", "12", "8", "gap", "1")  # fmt: skip
    assert "record seq 14 (line 1 of the batch): gap, expected seq 13" in chain["alarm"]

    code, out, err = await _signalbox(
        "admin", "--target", shipped.address, "--token", shipped.token, "evidence", "chains"
    )
    assert code == 0, err
    header, row = out.splitlines()[:2]
    assert header.split()[:5] == ["CHAIN", "NODE", "SHIPPED_SEQ", "PROVEN_THROUGH", "PRUNED_THROUGH"]
    assert row.split()[:5] == ["node-a/0", "node-a", "12", "8", "-"]
    assert "gap" in out


async def test_query_needs_a_token(shipped: RunningControlPlane) -> None:
    async with grpc.aio.insecure_channel(shipped.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin_pb2_grpc.AdminServiceStub(channel).QueryEvidence(admin_pb2.QueryEvidenceRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


STALE_AFTER = 600.0
MARGIN = 60.0
"""Seconds a loaded machine may take between moving a chain's last batch back and the call
that reads it: far more than any pause, far less than ``STALE_AFTER``."""


def last_batch_ago(database_url: str, chain_id: str, seconds: float) -> None:
    """``chain_id``'s last batch received ``seconds`` ago, by the database's clock (which both
    ingest and the stale check go by): what that long without a batch would do."""
    sql_execute(
        database_url,
        f"UPDATE evidence_chains SET last_received_at = now() - make_interval(secs => {seconds}) "
        f"WHERE chain_id = '{chain_id}'",
    )


async def test_a_chain_that_stopped_shipping_is_shown_stale(
    database_url: str, private_tmp: Path, node_keys: NodeKeys
) -> None:
    """Stale is the time since the chain's last batch against ``--evidence-stale-after``.
    That time is set rather than waited for: a wait of a short threshold, with a batch's
    freshness read against it, went stale early on a loaded machine (the batch and the read
    more than the threshold apart)."""
    settings = cp_settings(database_url, private_tmp, evidence_stale_after=STALE_AFTER)
    async with running_control_plane(settings, verify_checkpoint_signature=node_keys.verify) as plane:
        directory = new_dir(private_tmp, "evidence-stale-")
        tls = await plane.enroll("node-s", directory)
        async with (
            aio_channel(plane.node_address, tls) as node_channel,
            grpc.aio.insecure_channel(plane.address) as channel,
        ):
            stream = Stream(node_channel)
            assert (await stream.ship("node-s/0", await write_records(directory, "node-s", 2))).head_seq == 2
            admin = admin_pb2_grpc.AdminServiceStub(channel)

            async def chain() -> admin_pb2.EvidenceChainStatus:
                listed = await admin.ListEvidenceChains(
                    admin_pb2.ListEvidenceChainsRequest(), metadata=plane.metadata
                )
                (status,) = listed.chains
                return status

            assert (await chain()).stale is False
            last_batch_ago(plane.database_url, "node-s/0", STALE_AFTER - MARGIN)
            assert (await chain()).stale is False
            last_batch_ago(plane.database_url, "node-s/0", STALE_AFTER + 1)
            assert (await chain()).stale is True
            code, out, err = await _signalbox(
                "admin", "--target", plane.address, "--token", plane.token, "evidence", "chains"
            )
            assert code == 0, err
            assert "ok, stale" in out
            # A batch makes it fresh again.
            assert (await stream.ship("node-s/0", [])).head_seq == 2
            assert (await chain()).stale is False
            stream.close()


def test_an_import_cancelled_twice_leaves_no_partial_pack_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes away mid-upload cancels the handler; a server stopping then cancels
    it again. The partial pack (evidence records) must not stay in the temporary directory,
    even while every worker thread is busy. (A loop of its own: the test takes its executor.)"""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    executor = ThreadPoolExecutor(1)

    async def scenario() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        receiving = asyncio.Event()

        async def chunks() -> AsyncIterator[admin_pb2.EvidencePackChunk]:
            yield admin_pb2.EvidencePackChunk(data=b"{}\n" * 10)
            receiving.set()
            await asyncio.Event().wait()  # the client says nothing more

        task = asyncio.create_task(EvidenceAdmin().ImportEvidence(chunks(), context=None))  # type: ignore[arg-type]
        await receiving.wait()
        assert [name.startswith("signalbox-import-") for name in os.listdir(tmp_path)] == [True]
        busy = threading.Event()
        executor.submit(busy.wait)  # the only worker thread is taken
        try:
            task.cancel()
            await asyncio.sleep(0)  # the handler runs its cleanup
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            busy.set()

    asyncio.run(scenario())
    assert os.listdir(tmp_path) == []
