"""Bytes that are no protobuf message, sent to what nodes call: INVALID_ARGUMENT naming the
message and its type, never UNKNOWN (grpc's own answer, the parser's text) nor a stream
ended INTERNAL or UNAVAILABLE "resend"; and the control plane keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc, sync_pb2
from signalbox.api.evidence.v1 import evidence_pb2
from signalbox.tls import aio_channel
from tests.controlplane.conftest import TIMEOUT
from tests.fixtures.postgres import RunningControlPlane

BAD_UTF8 = b"\x0a\x03\xff\xfe\xfd"
"""Field 1, a string of three bytes that are not UTF-8."""
CORRUPT = b"\x0a\x10short"
"""Field 1, claiming 16 bytes and holding 5."""

UNARY = {
    "QuotaService/Lease": ("signalbox.api.config.v1.", "LeaseRequest", BAD_UTF8, "Wire format was corrupt"),
    "NodeIdentityService/Renew": ("signalbox.api.config.v1.", "RenewRequest", BAD_UTF8, "bad UTF-8"),
    "NodeEnrollmentService/Enroll": ("signalbox.api.config.v1.", "EnrollRequest", CORRUPT, "corrupt"),
}
STREAMS = {
    "EvidenceService/Ship": (
        "signalbox.api.evidence.v1.",
        "ShipBatch",
        evidence_pb2.ShipBatch(chain_id="node-u/0"),
    ),
    "ConfigSyncService/Sync": (
        "signalbox.api.config.v1.",
        "NodeMessage",
        sync_pb2.NodeMessage(hello=sync_pb2.Hello(node_id="node-u", mode=1)),
    ),
}


@pytest.fixture
async def node_channel(
    control_plane: RunningControlPlane, private_tmp: Path
) -> AsyncIterator[grpc.aio.Channel]:
    tls = await control_plane.enroll("node-u", private_tmp / "node-u")
    async with aio_channel(control_plane.node_address, tls) as channel:
        yield channel


async def _still_serves(channel: grpc.aio.Channel) -> None:
    answer = await quota_pb2_grpc.QuotaServiceStub(channel).Lease(quota_pb2.LeaseRequest(), timeout=TIMEOUT)
    assert list(answer.grants) == []


@pytest.mark.parametrize("method", sorted(UNARY))
async def test_a_request_that_is_no_message_is_an_invalid_argument_naming_its_type(
    control_plane: RunningControlPlane, node_channel: grpc.aio.Channel, method: str
) -> None:
    package, type_name, data, reason = UNARY[method]
    # Enroll is on the admin port: a node has no certificate yet.
    channel = grpc.aio.insecure_channel(control_plane.address) if method.endswith("Enroll") else node_channel
    call = channel.unary_unary(f"/{package}{method}", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(data, timeout=TIMEOUT)
    if channel is not node_channel:
        await channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith(f"request: not a valid {package}{type_name} message ("), details
    assert reason in details
    await _still_serves(node_channel)


@pytest.mark.parametrize("after_a_valid_one", [False, True], ids=["first", "second"])
@pytest.mark.parametrize("method", sorted(STREAMS))
async def test_a_stream_message_that_is_no_message_ends_the_stream_invalid_argument(
    node_channel: grpc.aio.Channel, method: str, after_a_valid_one: bool
) -> None:
    package, type_name, valid = STREAMS[method]
    messages = [valid.SerializeToString(), BAD_UTF8] if after_a_valid_one else [BAD_UTF8]

    async def requests() -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    call = node_channel.stream_stream(
        f"/{package}{method}", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call(requests(), timeout=TIMEOUT):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(
        f"message {len(messages)} of the stream: not a valid {package}{type_name} message ("
    ), refused.value.details()
    await _still_serves(node_channel)
