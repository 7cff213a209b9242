"""A budget with room left does not refuse a request for want of a lease.

A node holds about two lease periods of its observed demand; a burst, or the next request
right after one that took what the bucket held, found it short and was refused at once,
RESOURCE_EXHAUSTED "budget per day exceeded" with the budget 99% unused (every other request
of a one-at-a-time caller, most of a burst). The ledger has said the budget is not used up:
such a request now waits for the lease its shortfall kicked (at most a lease period)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, snapshot

PROMPT = "x" * 400
"""About 100 input tokens: about 13,000 nano-USD reserved a request on sim-fast."""
BUDGET = 10_000_000
SMALL = infer_pb2.GenerationParams(max_output_tokens=8)


async def test_requests_within_the_budget_are_served_one_at_a_time_and_in_a_burst(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> None:
    node = await start_node(quota_lease_interval=0.2)
    snap = snapshot(1, simulator.base_url)
    next(t for t in snap.tenants if t.id == "t-acme").limits.CopyFrom(
        snapshot_pb2.Limits(budget_day_nanos=BUDGET)
    )
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    refused: list[str] = []

    async def one(stub: infer_pb2_grpc.InferServiceStub, cid: str) -> None:
        try:
            await stub.Infer(chat(PROMPT, params=SMALL, correlation_id=cid), metadata=AUTH, timeout=10)
        except grpc.aio.AioRpcError as exc:
            refused.append(f"{cid}: {exc.code().name} {exc.details()}")

    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        for i in range(10):
            await one(stub, f"seq-{i}")
        await asyncio.gather(*(one(stub, f"burst-{i}") for i in range(10)))
    # 20 requests of about 13,000 nano-USD: 3% of the budget.
    assert refused == [], "\n".join(refused)
