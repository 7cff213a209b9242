"""Output rules over streamed tool call arguments on a real node: the gRPC stream and the
OpenAI-compatible HTTP door, the real OpenAI-compatible adapter reading a scripted SSE
upstream, evidence read back from the node's log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.dataplane.conftest import API_KEY, AUTH, NodeFactory, chat
from tests.dataplane.governance.node_streams import streamed_over_http
from tests.dataplane.governance.test_node_governance import (
    EMAIL,
    evidence_bytes,
    governed,
    one_record,
    rule,
    serving,
    sse,
    stub_for,  # noqa: F401  (a fixture)
    upstream_at,
)

WINDOW = 2 * len(EMAIL)
"""A finding of up to half the window is always seen whole before any of it goes out."""


class ToolCalling:
    """An OpenAI-compatible upstream that streams one tool call: its id and name, then
    ``fragments`` of its arguments, then ``finish_reason: tool_calls``."""

    def __init__(self) -> None:
        self.fragments: list[str] = []
        self.base_url = ""
        self.pace = 0.0
        """Seconds between chunks: paced, each window the rules release leaves on its own."""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        opening = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "send", "arguments": ""},
        }
        deltas: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "tool_calls": [opening]}, None)
        ]
        deltas += [
            ({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}, None) for f in self.fragments
        ]
        return await sse(request, body["model"], [*deltas, ({}, "tool_calls")], pace=self.pace)


@pytest.fixture
async def tool_calling() -> AsyncIterator[ToolCalling]:
    upstream = ToolCalling()
    async with upstream_at(upstream.completions) as base_url:
        upstream.base_url = base_url
        yield upstream


async def grpc_arguments(stub: Any, correlation_id: str, received: list[str]) -> None:
    """Streams over gRPC, appending each argument fragment to ``received`` as it arrives."""
    events = stub.InferStream(chat("send it", correlation_id=correlation_id), metadata=AUTH, timeout=10)
    async for event in events:
        if event.WhichOneof("event") == "delta":
            assert not event.delta.text
            received += [d.arguments_fragment for d in event.delta.tool_calls]


async def test_streamed_tool_call_arguments_are_redacted_on_both_doors(
    start_node: NodeFactory,
    tool_calling: ToolCalling,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    arguments = json.dumps({"to": EMAIL, "subject": "the quarterly figures", "cc": EMAIL})
    tool_calling.fragments = [arguments[i : i + 3] for i in range(0, len(arguments), 3)]
    tool_calling.pace = 0.005  # else the gRPC door may send what is released together as one delta
    profile = {"output": {"window": WINDOW, "rules": [rule("pii", "email", "redact")]}}
    node = await serving(start_node, governed(tool_calling.base_url, profile), signing_key, tmp_path)
    expected = {"to": "[REDACTED]", "subject": "the quarterly figures", "cc": "[REDACTED]"}

    received: list[str] = []
    await grpc_arguments(stub_for(node), "tools-grpc", received)
    assert json.loads("".join(received)) == expected
    assert len(received) > 1  # released as the stream went, not held to its end

    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="sim-fast",
            messages=[{"role": "user", "content": "send it"}],
            stream=True,
            extra_headers={"x-request-id": "tools-http"},
        )
        fragments = [
            call.function.arguments or ""
            async for chunk in stream
            for call in chunk.choices[0].delta.tool_calls or ()
            if call.function is not None
        ]
    assert json.loads("".join(fragments)) == expected

    for correlation_id in ("tools-grpc", "tools-http"):
        record = one_record(node, correlation_id)
        assert record["outcome"]["code"] == "OK"
        (entry,) = record["governance"]
        assert (entry["rule"], entry["action"], entry["count"]) == ("pii", "redact", 2)
        assert [(p["field"], p["start"]) for p in entry["positions"]] == [
            ("message.tool_calls[0].arguments", arguments.index(EMAIL)),
            ("message.tool_calls[0].arguments", arguments.rindex(EMAIL)),
        ]
    assert EMAIL.encode() not in evidence_bytes(node)


async def test_a_blocked_term_in_streamed_tool_call_arguments_ends_the_stream_on_both_doors(
    start_node: NodeFactory,
    tool_calling: ToolCalling,
    signing_key: Ed25519PrivateKey,
    tmp_path: Path,
    stub_for: Any,  # noqa: F811
) -> None:
    k = 30
    words = [f"w{i:02d} " for i in range(80)]
    words[k] = "falcon "
    tool_calling.fragments = ['{"note": "', *words, '"}']
    profile = {
        "output": {
            "window": 32,
            "rules": [rule("no-codename", "terms", "block", options={"terms": ["falcon"]})],
        }
    }
    node = await serving(start_node, governed(tool_calling.base_url, profile), signing_key, tmp_path)
    before = "".join(tool_calling.fragments[: k + 1])

    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await grpc_arguments(stub_for(node), "tools-block-grpc", received)
    assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no-codename" in (ended.value.details() or "")
    sent = "".join(received)
    assert "falcon" not in sent
    assert before.startswith(sent)
    assert len(before) - len(sent) <= 32  # held back at most the window

    body = await streamed_over_http(node, "tools-block-http", "send it")
    assert "event: error" in body
    assert "no-codename" in body
    assert "falcon" not in body.replace("no-codename", "")

    for correlation_id in ("tools-block-grpc", "tools-block-http"):
        record = one_record(node, correlation_id)
        assert record["outcome"]["code"] == "PERMISSION_DENIED"
        (entry,) = record["governance"]
        (position,) = entry["positions"]
        # The field's chunks: '{"note": "' is its chunk 0, word i its chunk i + 1.
        assert position["field"] == "message.tool_calls[0].arguments"
        assert (position["chunk"], position["start"]) == (k + 1, len(before))
        assert k + 1 <= entry["ended_at_chunk"] <= k + 1 + 32
