"""Every kind of refusal has its record, and the caller gets its id: bad key, policy denial,
invalid input, cancellation (unary and stream), quota; served answers and streams too, with
the durability marker (``signalbox-evidence: written``) in trailing metadata."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from dataplane.app import DataPlaneNode
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records, verify_chain
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Behaviour
from tests.dataplane.conftest import AUTH, chat
from tests.helpers import eventually

QUOTA = {"error": {"message": "no money", "type": "insufficient_quota", "code": "insufficient_quota"}}


def _trailers(metadata: Any) -> dict[str, str]:
    return {k: str(v) for k, v in (metadata or ())}


async def test_every_refusal_kind_and_every_answer_has_its_record(
    serving_node: DataPlaneNode, simulator: Any
) -> None:
    got: dict[str, tuple[str, dict[str, str]]] = {}  # correlation id -> (status, trailers)
    async with grpc.aio.insecure_channel(serving_node.address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)

        async def unary(cid: str, request: infer_pb2.InferRequest, metadata: Any = AUTH) -> None:
            request.correlation_id = cid
            call = stub.Infer(request, metadata=metadata, timeout=10)
            try:
                await call
                got[cid] = ("OK", _trailers(await call.trailing_metadata()))
            except grpc.aio.AioRpcError as exc:
                got[cid] = (exc.code().name, _trailers(exc.trailing_metadata()))

        await unary("cid-ok", chat())
        await unary("cid-bad-key", chat(), (("authorization", "Bearer sk-nobody"),))
        await unary("cid-denied", chat(model="sim-secret"))
        await unary("cid-invalid", infer_pb2.InferRequest())  # no messages
        simulator.set_behaviour("sim-smart", Behaviour(fail_status=429, error_body=QUOTA))
        await unary("cid-quota", chat(model="sim-smart"))

        stream = stub.InferStream(chat(correlation_id="cid-stream"), metadata=AUTH, timeout=10)
        events = [e async for e in stream]
        got["cid-stream"] = ("OK", _trailers(await stream.trailing_metadata()))

        # A unary call the caller gives up on while the upstream is still answering.
        simulator.set_behaviour("sim-fast", Behaviour(latency_ms=3_000))
        slow = stub.Infer(chat(correlation_id="cid-cancelled"), metadata=AUTH, timeout=10)
        await eventually(lambda: simulator.stats("sim-fast").chat >= 2, message="slow call upstream")
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

    path = log_path(serving_node.settings.data_dir, serving_node.settings.node_id)
    await eventually(
        lambda: any(r["correlation_id"] == "cid-cancelled" for r in read_records(path)),
        message="the cancelled call's record",
    )
    records = {r["correlation_id"]: r for r in read_records(path)}
    assert {cid: records[cid]["outcome"]["code"] for cid in records} == {
        "cid-ok": "OK",
        "cid-bad-key": "UNAUTHENTICATED",
        "cid-denied": "NOT_FOUND",
        "cid-invalid": "INVALID_ARGUMENT",
        "cid-quota": "RESOURCE_EXHAUSTED",
        "cid-stream": "OK",
        "cid-cancelled": "CANCELLED",
    }
    assert records["cid-quota"]["routing"]["attempts"][0]["outcome"] == "quota_exhausted"
    for cid, (status, trailers) in got.items():
        assert status == records[cid]["outcome"]["code"], cid
        assert trailers["signalbox-evidence-id"] == records[cid]["record_id"], cid
        assert trailers["signalbox-evidence"] == "written", cid
    assert events[-1].end.evidence_id == records["cid-stream"]["record_id"]
    assert verify_chain(path).seq == 7
