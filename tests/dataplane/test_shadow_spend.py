"""A mirrored shadow call is paid for: its cost counts against the tenant's budget.

The shadow deployment bills the tenant as any other call (its record carries the tenant, the
key and the cost; the control plane's usage reports and evidence spend count it). The node
reserved only the served request's worst case and never counted the mirror, so a policy
mirroring to a dearer model let the tenant spend many times its budget; an air-gapped node,
whose budget is its own count, never noticed at all."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.quota.buckets import Kind
from dataplane.quota.local import BUDGETS_FILE, QUOTA_DIR
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator.behaviour import Behaviour
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually

PROMPT = "x" * 400
"""About 100 input tokens: 10,000 nano-USD on sim-fast, 200,000 on sim-smart (the shadow)."""
BUDGET = 1_000_000
"""Nano-USD a day: about 70 requests on sim-fast alone, 4 once the shadow is paid for too."""
SMALL = infer_pb2.GenerationParams(max_output_tokens=8)


MIRROR = {"name": "mirror", "models": ["sim-fast"], "shadow": {"model": "sim-smart", "share": 1.0}}
"""Every request served by sim-fast, mirrored to sim-smart (20 times its price)."""


async def _mirrored_node(
    start_node: NodeFactory, base_url: str, key: Ed25519PrivateKey, budget: int = 0, **settings: Any
) -> DataPlaneNode:
    node = await start_node(**settings)
    snap = snapshot(1, base_url, rules=[MIRROR])
    if budget:
        next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
            snapshot_pb2.Limits(budget_day_nanos=budget)
        )
    assert (await node.store.apply(envelope(snap, key))).accepted
    return node


async def test_a_shadow_calls_cost_counts_against_the_budget(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    node = await _mirrored_node(start_node, simulator.base_url, signing_key, BUDGET, quota_lease_interval=0.1)
    path = log_path(tmp_path / "node", "node-test")

    def records() -> list[dict[str, Any]]:
        return list(read_records(path))

    served = 0
    refusals: list[str] = []
    in_a_row = 0
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for i in range(40):
            try:
                await stub.Infer(
                    chat(PROMPT, params=SMALL, correlation_id=f"m-{i}"), metadata=AUTH, timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                refusals.append(f"{exc.code().name} {exc.details()}")
                in_a_row += 1
                if in_a_row >= 3:
                    break
                # A refusal may be a lease pending: final only if it holds a few rounds later.
                assert node.leaser is not None
                rounds = node.leaser.rounds
                await eventually(lambda r=rounds: node.leaser and node.leaser.rounds > r + 2)  # type: ignore[misc]
                continue
            served += 1
            in_a_row = 0
            # One request at a time, its shadow finished: no mirror in flight past the budget.
            await eventually(
                lambda i=i: any(r["correlation_id"] == f"m-{i}" and r["kind"] == "shadow" for r in records()),  # type: ignore[misc]
                message="the shadow's record",
            )
    shadows = [r for r in records() if r["kind"] == "shadow"]
    assert len(shadows) == served
    assert all(r["outcome"]["code"] == "OK" and r["cost"]["total_nanos"] >= 200_000 for r in shadows)
    assert refusals
    assert all("budget per day exceeded" in r for r in refusals), refusals
    spent = sum(r.get("cost", {}).get("total_nanos", 0) for r in records())
    # Past the budget by at most the request admitted on credit and its shadow.
    worst = max(r["cost"]["total_nanos"] for r in shadows) + 20_000
    assert spent <= BUDGET + worst, (spent, served)


async def test_a_shadow_call_cut_by_the_deadline_counts_as_generated_in_full(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """As an attempt cut by a timeout: the shadow deployment had the request and may bill all
    of it. It cost nothing: a caller's short deadline made every mirror free."""
    simulator.set_behaviour("sim-smart", Behaviour(latency_ms=5_000))
    node = await _mirrored_node(start_node, simulator.base_url, signing_key)
    path = log_path(tmp_path / "node", "node-test")
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        await stub.Infer(chat(PROMPT, params=SMALL, correlation_id="cut-mirror"), metadata=AUTH, timeout=1.0)
    await eventually(
        lambda: any(r["kind"] == "shadow" for r in read_records(path)), message="the shadow's record"
    )
    [record] = [r for r in read_records(path) if r["kind"] == "shadow"]
    assert record["outcome"]["code"] == "timeout"
    usage = record["usage"]
    assert usage is not None, record
    assert (usage["output_tokens"], usage["estimated"]) == (SMALL.max_output_tokens, True)
    assert usage["input_tokens"] >= len(PROMPT) // 4
    # sim-smart: 2,000 nano-USD an input token, 8,000 an output token.
    assert record["cost"]["total_nanos"] == usage["input_tokens"] * 2_000 + SMALL.max_output_tokens * 8_000


async def test_a_node_stopping_records_the_shadow_calls_still_in_flight(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A graceful stop drained the served requests but not their mirrors: a shadow call the
    upstream had (and bills) went unrecorded and uncharged."""
    simulator.set_behaviour("sim-smart", Behaviour(latency_ms=1_000))
    node = await _mirrored_node(start_node, simulator.base_url, signing_key)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        await stub.Infer(chat(PROMPT, params=SMALL, correlation_id="in-flight"), metadata=AUTH, timeout=10)
    await eventually(lambda: simulator.stats("sim-smart").chat == 1, message="the upstream has the mirror")
    await node.stop(5.0)
    path = log_path(tmp_path / "node", "node-test")
    shadows = [r for r in read_records(path) if r["kind"] == "shadow"]
    assert [(r["correlation_id"], r["outcome"]["code"]) for r in shadows] == [("in-flight", "OK")]
    assert shadows[0]["cost"]["total_nanos"] > 0


async def test_a_shadow_call_cancelled_when_the_drain_runs_out_is_recorded_and_charged(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A mirror still running when the stop's drain ran out was cancelled without a record:
    the upstream had the request (and may bill it), yet neither evidence nor budget knew."""
    simulator.set_behaviour("sim-smart", Behaviour(latency_ms=5_000))
    node = await _mirrored_node(start_node, simulator.base_url, signing_key, BUDGET)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        await stub.Infer(chat(PROMPT, params=SMALL, correlation_id="drain-cut"), metadata=AUTH, timeout=60)
    await eventually(lambda: simulator.stats("sim-smart").chat == 1, message="the upstream has the mirror")
    await node.stop(0.2)
    path = log_path(tmp_path / "node", "node-test")
    records = list(read_records(path))
    [record] = [r for r in records if r["kind"] == "shadow"]
    assert (record["correlation_id"], record["outcome"]["code"]) == ("drain-cut", "cancelled")
    usage = record["usage"]
    assert usage is not None, record
    assert (usage["output_tokens"], usage["estimated"]) == (SMALL.max_output_tokens, True)
    cost = record["cost"]["total_nanos"]
    assert cost == usage["input_tokens"] * 2_000 + SMALL.max_output_tokens * 8_000
    # Charged: the node's ledger counts it with the request's cost.
    assert _stored_day_spend(tmp_path / "node") == sum(r["cost"]["total_nanos"] for r in records)


async def test_an_air_gapped_nodes_ledger_counts_what_its_drain_spent(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The stop cancelled the leaser before the drain: what the drained request and its mirror
    spent past what the worker held (the mirror's charge, a debt) never reached the node's
    ledger, while their records carry it; restarted, the node let the tenant spend it again.
    Once drained, a last lease call reports the debt and hands back what is held unused: the
    budget's count on disk is what the records say was spent."""
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=500))
    simulator.set_behaviour("sim-smart", Behaviour(latency_ms=1_000))
    data_dir = tmp_path / "node"
    node = await _mirrored_node(
        start_node, simulator.base_url, signing_key, BUDGET, data_dir=data_dir, quota_lease_interval=0.1
    )
    assert node.ledger is not None  # no control plane: the node's own ledger
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        call = stub.Infer(chat(PROMPT, params=SMALL, correlation_id="drained"), metadata=AUTH, timeout=30)
        await eventually(
            lambda: simulator.stats("sim-fast").chat == 1, message="the upstream has the request"
        )
        await node.stop(10.0)
        answer = await call
    assert answer.correlation_id == "drained"
    records = list(read_records(log_path(data_dir, "node-test")))
    assert sorted((r["kind"], r["outcome"]["code"]) for r in records if r["correlation_id"] == "drained") == [
        ("infer", "OK"),
        ("shadow", "OK"),
    ]
    recorded = sum((r.get("cost") or {}).get("total_nanos", 0) for r in records)
    assert recorded > 200_000  # the mirror's share (sim-smart) included

    assert _stored_day_spend(data_dir) == recorded
    restarted = await start_node(data_dir=data_dir)
    assert restarted.ledger is not None
    assert restarted.ledger.spent("t-acme", "", Kind.BUDGET_DAY) == recorded


def _stored_day_spend(data_dir: Path) -> int:
    """The tenant's day budget as the node's ledger persisted it (its only budget here)."""
    stored = json.loads((data_dir / QUOTA_DIR / BUDGETS_FILE).read_text())
    [(scope, used)] = [((b["tenant_id"], b["api_key_id"], b["kind"]), b["used"]) for b in stored["budgets"]]
    assert scope == ("t-acme", "", Kind.BUDGET_DAY)
    return int(used)


async def test_an_air_gapped_nodes_ledger_waits_for_every_workers_last_lease(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """With ``--workers 2`` worker 0 holds the ledger: stopped idle, it stopped serving it at
    once, and worker 1, still draining a request and its mirror, found no ledger for its last
    lease: what its drain spent past what it held was lost from the budget again."""
    simulator.set_behaviour("sim-fast", Behaviour(latency_ms=500))
    simulator.set_behaviour("sim-smart", Behaviour(latency_ms=1_000))
    data_dir = tmp_path / "node"
    workers = [
        await _mirrored_node(
            start_node, simulator.base_url, signing_key, BUDGET, worker=i, workers=2, quota_lease_interval=0.1
        )
        for i in range(2)
    ]
    assert workers[0].ledger is not None
    assert workers[1].ledger is None  # it leases from worker 0's
    async with grpc.aio.insecure_channel(workers[1].address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        call = stub.Infer(chat(PROMPT, params=SMALL, correlation_id="worker-1"), metadata=AUTH, timeout=30)
        await eventually(
            lambda: simulator.stats("sim-fast").chat == 1, message="the upstream has the request"
        )
        # SIGTERM reaches every worker at once.
        await asyncio.gather(*(worker.stop(10.0) for worker in workers))
        assert (await call).correlation_id == "worker-1"
    records = list(read_records(log_path(data_dir, "node-test", "1")))
    assert sorted(r["kind"] for r in records) == ["infer", "shadow"]
    assert not list(read_records(log_path(data_dir, "node-test", "0")))
    assert _stored_day_spend(data_dir) == sum(r["cost"]["total_nanos"] for r in records)
