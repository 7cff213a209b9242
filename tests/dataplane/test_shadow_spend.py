"""A mirrored shadow call is paid for: its cost counts against the tenant's budget.

The shadow deployment bills the tenant as any other call (its record carries the tenant, the
key and the cost; the control plane's usage reports and evidence spend count it). The node
reserved only the served request's worst case and never counted the mirror, so a policy
mirroring to a dearer model let the tenant spend many times its budget; an air-gapped node,
whose budget is its own count, never noticed at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot
from tests.helpers import eventually

PROMPT = "x" * 400
"""About 100 input tokens: 10,000 nano-USD on sim-fast, 200,000 on sim-smart (the shadow)."""
BUDGET = 1_000_000
"""Nano-USD a day: about 70 requests on sim-fast alone, 4 once the shadow is paid for too."""
SMALL = infer_pb2.GenerationParams(max_output_tokens=8)


async def test_a_shadow_calls_cost_counts_against_the_budget(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    mirror = {"name": "mirror", "models": ["sim-fast"], "shadow": {"model": "sim-smart", "share": 1.0}}
    node = await start_node(quota_lease_interval=0.1)
    snap = snapshot(1, simulator.base_url, rules=[mirror])
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
        snapshot_pb2.Limits(budget_day_nanos=BUDGET)
    )
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
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
