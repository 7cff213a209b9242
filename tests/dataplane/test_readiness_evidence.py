"""A node that cannot write evidence answers no request: it says so to load balancers
(``/readyz`` 503, gRPC health NOT_SERVING), and offers itself again after a while, so a node
whose disk came back rejoins the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

import dataplane.readiness
from dataplane.evidence.log import log_path
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, NodeFactory, chat, envelope, readyz, snapshot
from tests.helpers import eventually


async def test_a_node_whose_evidence_cannot_be_written_is_not_ready_until_it_may_retry(
    start_node: NodeFactory,
    simulator: Any,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataplane.readiness, "EVIDENCE_RETRY_S", 1.0)
    # A real full disk: the log path is /dev/full, where every write fails with ENOSPC.
    path = log_path(tmp_path / "node", "node-test")
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/full")
    node = await start_node(http_listen="127.0.0.1:0")
    assert (await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))).accepted

    async with grpc.aio.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def grpc_health() -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            return int(reply.status)

        assert await readyz(node) == (200, {"status": "ready"})
        assert await grpc_health() == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await infer_pb2_grpc.InferServiceStub(channel).Infer(chat(), metadata=AUTH, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

        status, body = await readyz(node)
        assert status == 503
        assert body["reason"].startswith("cannot write evidence")
        assert await grpc_health() == health_pb2.HealthCheckResponse.NOT_SERVING

        # No request since: the node offers itself again, to learn whether the disk is back.
        async def ready_again() -> bool:
            return await readyz(node) == (200, {"status": "ready"}) and (
                await grpc_health() == health_pb2.HealthCheckResponse.SERVING
            )

        await eventually(ready_again, timeout=10, message="ready again")
