"""An air-gapped node killed (SIGKILL) between a charge and the lease round that would count
it: restarted, its budget counts what its evidence says was spent.

A mirror's cost (and any cost past what a worker reserved) reaches the node's ledger, and so
``budgets.json``, only with the worker's next lease round, and kicked rounds are spaced a
quarter lease period apart at least. A SIGKILL in that gap lost the charge from the file,
though the evidence log has it; the node recounted from evidence only when the file was
missing or unreadable, so the restarted node let the tenant spend it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence.log import chain_files
from dataplane.evidence.records import read_records
from dataplane.quota.buckets import Kind
from dataplane.quota.local import BUDGETS_FILE, QUOTA_DIR
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2_grpc
from signalbox.ports import free_port
from signalbox.shell.simulator.behaviour import Behaviour
from tests.dataplane.conftest import AUTH, chat, envelope, pinned_serve_args, snapshot
from tests.dataplane.test_shadow_spend import BUDGET, MIRROR, PROMPT, SMALL
from tests.dataplane.test_workers import NODE, workers_up
from tests.helpers import eventually

LEASE_MS = 120_000
"""A lease period: the charge's kicked round comes a quarter of it (30 s) after the first."""


def _pin(path: Path, key: Ed25519PrivateKey, base_url: str) -> Path:
    """A site pin whose every request is mirrored to a 20 times dearer model, within a budget."""
    snap = snapshot(1, base_url, deployment="", rules=[MIRROR])
    snap.providers[0].location = snapshot_pb2.PROVIDER_LOCATION_SITE
    snap.providers[0].site = "lab"
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
        snapshot_pb2.Limits(budget_day_nanos=BUDGET)
    )
    path.write_bytes(envelope(snap, key).SerializeToString())
    return path


def _recorded(data_dir: Path) -> tuple[int, set[str]]:
    """What the node's evidence says acme spent, and the kinds of its records."""
    records = [r for chain in chain_files(data_dir) for r in read_records(chain)]
    spent = sum(
        (r.get("cost") or {}).get("total_nanos", 0) for r in records if r.get("tenant_id") == "t-acme"
    )
    return spent, {str(r.get("kind")) for r in records}


def _day_spend(data_dir: Path) -> int | None:
    """The tenant's day budget in the node's budgets file (None: not counted there yet)."""
    path = data_dir / QUOTA_DIR / BUDGETS_FILE
    if not path.exists():
        return None
    budgets = json.loads(path.read_text())["budgets"]
    day = [
        b["used"]
        for b in budgets
        if (b["tenant_id"], b["api_key_id"], b["kind"]) == ("t-acme", "", Kind.BUDGET_DAY)
    ]
    return int(day[0]) if day else None


async def test_a_charge_a_sigkill_kept_from_the_budgets_file_is_counted_from_evidence_at_restart(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    # The mirror ends well after the first lease round (kicked by the request on credit).
    simulator.set_behaviour("sim-smart", Behaviour(latency_ms=500))
    pin = _pin(tmp_path / "site.snapshot", signing_key, simulator.base_url)
    data_dir = tmp_path / "node"
    port = free_port()
    args = pinned_serve_args(
        pin, trust_key, data_dir, "--node-id", NODE, "--workers", "1", "--quota-lease-ms", str(LEASE_MS),
        "--listen", f"127.0.0.1:{port}",
    )  # fmt: skip
    async with workers_up(args, 1) as process:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            # On credit: the first lease round follows at once; the mirror's charge (20 times
            # the request's cost) waits for the next, 30 s later.
            await stub.Infer(chat(PROMPT, params=SMALL, correlation_id="m-1"), metadata=AUTH, timeout=30)
        await eventually(
            lambda: _day_spend(data_dir) is not None, timeout=30, message="the first lease round"
        )
        await eventually(
            lambda: "shadow" in _recorded(data_dir)[1], timeout=20, message="the mirror's record"
        )
        before = _day_spend(data_dir)
        recorded, _ = _recorded(data_dir)
        assert before is not None
        # The state a kill in the gap leaves: the charge in the evidence, not in the file.
        assert before < recorded, (before, recorded)
        supervisor = psutil.Process(process.pid)
        for worker in supervisor.children(recursive=True):
            worker.kill()  # SIGKILL: no drain, no last lease
        process.kill()
        await process.wait()
    assert _day_spend(data_dir) == before

    async with workers_up(args, 1) as process:
        # Read at startup, before the port opens: the larger of the file's and the evidence's.
        assert _day_spend(data_dir) == recorded
        process.kill()
        await process.wait()
