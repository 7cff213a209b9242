"""Helpers to drive adapters in tests: build one, drain a stream with a deadline, assemble it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from dataplane.chat import FinishReason, StreamChunk, Usage
from dataplane.config.model import ProviderConfig
from dataplane.providers.base import ProviderAdapter
from dataplane.providers.registry import build_adapter
from dataplane.upstream import UpstreamClient

CREDENTIAL = "sk-test-SECRET-0123456789"


def make_adapter(
    type_name: str,
    base_url: str,
    client: UpstreamClient,
    *,
    settings: Mapping[str, str] | None = None,
    credential: str | None = CREDENTIAL,
    timeout_s: float = 60.0,
) -> ProviderAdapter:
    config = ProviderConfig(
        id=f"p-{type_name}",
        name=type_name,
        type=type_name,
        base_url=base_url,
        settings=dict(settings or {}),
        timeout_s=timeout_s,
    )
    return build_adapter(config, client, credential)


async def drain(
    stream: AsyncIterator[StreamChunk], timeout: float = 5.0, into: list[StreamChunk] | None = None
) -> list[StreamChunk]:
    """All chunks of ``stream``; a hang fails the test instead of blocking it.

    ``into`` collects the chunks seen before an error, for tests of failures mid-stream.
    """
    received = [] if into is None else into
    async with asyncio.timeout(timeout):
        async for chunk in stream:
            received.append(chunk)
    return received


@dataclass
class Assembled:
    """A stream folded the way a client would fold it."""

    text: str = ""
    tool_calls: dict[int, dict[str, str]] = field(default_factory=dict)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    finish_count: int = 0


def assemble(chunks: list[StreamChunk]) -> Assembled:
    """Fold chunks, checking the delta contract: the first delta of a call carries id and name."""
    out = Assembled()
    for chunk in chunks:
        out.text += chunk.text
        for delta in chunk.tool_calls:
            if delta.index not in out.tool_calls:
                assert delta.id, f"first delta of call {delta.index} lacks an id: {delta}"
                assert delta.name, f"first delta of call {delta.index} lacks a name: {delta}"
                assert delta.index == len(out.tool_calls), "tool-call indexes must be 0, 1, ..."
                out.tool_calls[delta.index] = {"id": delta.id, "name": delta.name, "arguments": ""}
            out.tool_calls[delta.index]["arguments"] += delta.arguments_fragment
        if chunk.finish_reason is not None:
            out.finish_reason = chunk.finish_reason
            out.finish_count += 1
        if chunk.usage is not None:
            out.usage = chunk.usage
    return out
