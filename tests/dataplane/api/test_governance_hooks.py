"""The pipeline's governance steps are real hooks: they see and may change the request
before the model and the answer after it (each streamed chunk too), may refuse, and
what they did is in the request's evidence record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataplane.app import DataPlaneNode
from dataplane.chat import ChatRequest, ChatResponse, EmbedRequest, Message, StreamChunk, TextPart
from dataplane.config.model import DataClass, RuntimeConfig, Scope, TenantConfig
from dataplane.errors import PermissionDenied
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.node_settings import NodeSettings
from signalbox.api.infer.v1 import infer_pb2_grpc
from tests.dataplane.conftest import AUTH, chat, envelope, snapshot


class Redactor:
    """Replaces "secret" in the prompt, marks the answer, counts chunks; refuses "forbidden"."""

    def __init__(self) -> None:
        self.chunks = 0

    def begin(self, config: RuntimeConfig, tenant: TenantConfig) -> Redactor:
        return self

    data_class = DataClass.UNSPECIFIED
    classified_by = ""
    fallback_on: frozenset[str] = frozenset()

    def govern_input(
        self, body: ChatRequest | EmbedRequest, actions: list[dict[str, object]]
    ) -> ChatRequest | EmbedRequest:
        if isinstance(body, EmbedRequest):
            return body
        if any("forbidden" in m.text for m in body.messages):
            actions.append({"step": "redactor", "action": "refused"})
            raise PermissionDenied("governance: the request mentions a forbidden topic")
        messages = tuple(
            replace(m, content=(TextPart(m.text.replace("secret", "[redacted]")),))
            if "secret" in m.text
            else m
            for m in body.messages
        )
        if messages != body.messages:
            actions.append({"step": "redactor", "action": "redacted", "where": "input"})
        return replace(body, messages=messages)

    def check_answer(
        self,
        request: ChatRequest,
        response: ChatResponse,
        model: str,
        actions: list[dict[str, object]],
        *,
        streamed: bool = False,
    ) -> None:
        return None

    def govern_output(self, response: ChatResponse, actions: list[dict[str, object]]) -> ChatResponse:
        actions.append({"step": "redactor", "action": "checked", "where": "output"})
        marked = Message(response.message.role, (TextPart(response.message.text + " [governed]"),))
        return replace(response, message=marked)

    def stream(self, actions: list[dict[str, object]]) -> Redactor:
        return self

    def feed(self, chunk: StreamChunk) -> StreamChunk:
        self.chunks += 1
        return chunk

    def finish(self) -> StreamChunk | None:
        return None

    def conceal(self, text: str) -> str:
        return text


@pytest.fixture
async def governed(tmp_path: Path, trust_key: Path, simulator: Any, signing_key: Ed25519PrivateKey) -> Any:
    redactor = Redactor()
    settings = NodeSettings(
        listen="127.0.0.1:0",
        trust_keys=(trust_key,),
        node_id="node-governed",
        data_dir=tmp_path / "node",
        scope=Scope(deployment="test"),
    )
    node = DataPlaneNode(settings, governance=[redactor])
    await node.start()
    try:
        result = await node.store.apply(envelope(snapshot(1, simulator.base_url), signing_key))
        assert result.accepted, result.reason
        async with grpc.aio.insecure_channel(node.address) as channel:
            yield node, redactor, infer_pb2_grpc.InferServiceStub(channel)
    finally:
        await node.stop(0)


def _record(node: DataPlaneNode, correlation_id: str) -> dict[str, Any]:
    records = read_records(log_path(node.settings.data_dir, node.settings.node_id))
    (found,) = [r for r in records if r["correlation_id"] == correlation_id]
    return found


async def test_input_and_output_steps_change_what_is_sent_and_answered(governed: Any) -> None:
    node, _, stub = governed
    response = await stub.Infer(chat("my secret plan", correlation_id="gov-1"), metadata=AUTH, timeout=10)
    text = "".join(p.text for p in response.message.content)
    # The simulator echoes the prompt it received: the model never saw the secret.
    assert "secret" not in text
    assert "[redacted]" in text
    assert text.endswith(" [governed]")
    actions = _record(node, "gov-1")["governance"]
    assert {"step": "redactor", "action": "redacted", "where": "input"} in actions
    assert {"step": "redactor", "action": "checked", "where": "output"} in actions


async def test_a_refusing_step_ends_the_request_with_one_evidence_record(governed: Any) -> None:
    node, _, stub = governed
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Infer(chat("a forbidden topic", correlation_id="gov-2"), metadata=AUTH, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    record = _record(node, "gov-2")
    assert record["outcome"]["code"] == "PERMISSION_DENIED"
    assert record["governance"] == [{"step": "redactor", "action": "refused"}]
    assert record["routing"] is None  # refused before routing


async def test_every_streamed_chunk_passes_the_output_step(governed: Any) -> None:
    _, redactor, stub = governed
    call = stub.InferStream(chat("tell me a story", correlation_id="gov-3"), metadata=AUTH, timeout=10)
    events = [e async for e in call]
    deltas = [e for e in events if e.WhichOneof("event") == "delta"]
    assert deltas
    assert redactor.chunks >= len(deltas)


async def test_an_answer_digests_alike_streamed_or_whole(
    serving_node: DataPlaneNode, infer_stub: infer_pb2_grpc.InferServiceStub
) -> None:
    # The response digest is over the plain answer, not a front door's encoding: the same
    # answer streamed and served whole digests the same; another answer does not.
    call = infer_stub.InferStream(chat("same prompt", correlation_id="dig-s"), metadata=AUTH, timeout=10)
    streamed = "".join([e.delta.text async for e in call if e.WhichOneof("event") == "delta"])
    whole = await infer_stub.Infer(chat("same prompt", correlation_id="dig-u"), metadata=AUTH, timeout=10)
    assert streamed == "".join(p.text for p in whole.message.content)
    await infer_stub.Infer(chat("another prompt", correlation_id="dig-o"), metadata=AUTH, timeout=10)
    s, u, o = (_record(serving_node, c)["response_sha256"] for c in ("dig-s", "dig-u", "dig-o"))
    assert s == u
    assert o != u
