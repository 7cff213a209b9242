"""A node's Infer API through server reflection alone, as grpcurl and generic clients use it."""

from __future__ import annotations

import asyncio

from dataplane.app import DataPlaneNode
from tests import reflection_client
from tests.dataplane.conftest import AUTH


async def test_a_client_lists_and_calls_infer_through_reflection_alone(serving_node: DataPlaneNode) -> None:
    services = await asyncio.to_thread(reflection_client.list_services, serving_node.address)
    assert services == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "signalbox.api.infer.v1.InferService",
    ]
    answer = await asyncio.to_thread(
        reflection_client.call,
        serving_node.address,
        "signalbox.api.infer.v1.InferService",
        "Infer",
        {"messages": [{"role": "ROLE_USER", "content": [{"text": "hello"}]}]},
        AUTH,
    )
    assert answer["message"]["content"][0]["text"]
    assert answer["correlationId"]
    assert answer["evidenceId"]
