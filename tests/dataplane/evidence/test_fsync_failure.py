"""An fsync that fails breaks the evidence log for good: nothing more is written, counted
durable (shipped) or signed, and the node says it is not ready, until a restart checks the
records on disk. The kernel reports a failed writeback once and may have dropped the pages,
so a later fsync that succeeds proves nothing about them (PostgreSQL panics on the first)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import dataplane.evidence.log as evidence_log
from dataplane.evidence.log import EvidenceLog
from tests.dataplane.conftest import NodeFactory, envelope, readyz, snapshot
from tests.helpers import eventually


def _failing_fsync(*_: Any) -> None:
    # Where a disk's I/O error reaches the log (fault injection at its one sync seam).
    raise OSError(errno.EIO, "Input/output error")


async def test_a_failed_fsync_stops_the_log_from_counting_shipping_and_signing_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It logged the error and synced on: the next fsync "succeeded", the durable seq (what
    # the shipper sends) moved past records the kernel may have dropped, and a checkpoint
    # was signed over them.
    key = ec.generate_private_key(ec.SECP256R1())
    log = EvidenceLog(
        tmp_path / "evidence" / "n@0.jsonl",
        "n",
        signer=key,
        checkpoint_records=10_000,
        checkpoint_interval=3600,
    )
    async with log:
        for _ in range(3):
            log.append({"n": 1})
        await eventually(lambda: log.durable_seq == 3, message="three records synced")
        monkeypatch.setattr(evidence_log, "_sync_files", _failing_fsync)
        log.append({"n": 4})  # with the OS; its fsync fails
        await eventually(lambda: log.broken != "", message="the log broken")
        assert "fsync failed (Input/output error)" in log.broken
        monkeypatch.undo()  # the disk answers again: the log stays broken
        with pytest.raises(OSError, match="fsync failed"):
            log.append({"n": 5})
        assert not await log.checkpoint()
        assert log.durable_seq == 3
        assert log.head.seq == 4


async def test_a_node_whose_evidence_fsync_failed_is_not_ready_and_stays_so(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted

    assert await readyz(node) == (200, {"status": "ready"})
    monkeypatch.setattr(evidence_log, "_sync_files", _failing_fsync)
    assert node.evidence is not None
    node.evidence.append({"n": 1})  # any record wakes the sync thread

    async def not_ready() -> bool:
        status, body = await readyz(node)
        return status == 503 and body["reason"].startswith("cannot write evidence (fsync failed")

    await eventually(not_ready, message="not ready once the fsync failed")
