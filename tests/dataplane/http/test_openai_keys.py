"""Keys inside a chat body's objects, read with the official ``openai`` SDK: every key its
own param types define is taken (or refused as not supported, by name); a key OpenAI does
not define is refused as "unrecognized request argument", named by its full path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionContentPartImageParam,
    ChatCompletionContentPartTextParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)

from signalbox.api.common.v1 import common_pb2
from tests.dataplane.conftest import API_KEY, NodeFactory, envelope, snapshot

PNG = "data:image/png;base64,iVBORw0KGgo="
HI: ChatCompletionUserMessageParam = {"role": "user", "content": "hi"}


@pytest.fixture
async def sdk(
    start_node: NodeFactory, simulator: Any, signing_key: Ed25519PrivateKey
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK on a node whose sim-fast also takes images and JSON schemas."""
    node = await start_node(http_listen="127.0.0.1:0")
    snap = snapshot(1, simulator.base_url)
    for model in snap.models:
        if model.alias == "sim-fast":
            model.capabilities.extend((common_pb2.CAPABILITY_VISION, common_pb2.CAPABILITY_JSON_SCHEMA))
    assert (await node.store.apply(envelope(snap, signing_key))).accepted
    async with openai.AsyncOpenAI(
        base_url=f"http://{node.http_address}/v1", api_key=API_KEY, max_retries=0
    ) as client:
        yield client


async def _refused(sdk: openai.AsyncOpenAI, param: str, says: str, **fields: Any) -> None:
    fields.setdefault("messages", [HI])
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(model="sim-fast", **fields)
    assert refused.value.body["param"] == param, refused.value.body  # type: ignore[index]
    assert says in refused.value.message, refused.value.message


async def test_keys_inside_a_messages_parts_and_tool_calls_are_taken_or_refused_by_name(
    sdk: openai.AsyncOpenAI, simulator: Any
) -> None:
    # Unknown keys inside content parts, image_url objects, tool calls and their function
    # were ignored: {"type": "text", "text": "x", "cache_control": {}} was served, a
    # misspelt key silently changed nothing the caller could see, and any JSON rode along.
    text: ChatCompletionContentPartTextParam = {"type": "text", "text": "what is in it?"}
    image: ChatCompletionContentPartImageParam = {
        "type": "image_url",
        "image_url": {"url": PNG, "detail": "low"},
    }
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "look", "arguments": '{"at": "it"}'},
    }
    asked: ChatCompletionAssistantMessageParam = {"role": "assistant", "content": None, "tool_calls": [call]}
    answered: ChatCompletionToolMessageParam = {"role": "tool", "tool_call_id": "call_1", "content": "seen"}
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": [text, image]}, asked, answered]
    served = await sdk.chat.completions.create(model="sim-fast", messages=messages)
    assert served.choices[0].message.content
    sent = simulator.stats("sim-fast").last_request["messages"]
    assert sent[0]["content"][1]["image_url"]["detail"] == "low"
    assert sent[1]["tool_calls"][0]["function"] == call["function"]

    def user(*parts: Any) -> list[Any]:
        return [{"role": "user", "content": list(parts)}]

    def assistant(*calls: Any, **fields: Any) -> list[Any]:
        return [{"role": "assistant", "content": None, "tool_calls": list(calls), **fields}, answered]

    function = call["function"]
    cases = [
        (user(text, {**text, "cache_control": {"type": "ephemeral"}}), "messages[0].content[1].cache_control",
         "unrecognized request argument"),
        (user({**image, "image_url": {"url": PNG, "details": "low"}}), "messages[0].content[0].image_url.details",
         "unrecognized"),
        (user({**image, "detail": "low"}), "messages[0].content[0].detail", "unrecognized"),
        (user({**text, "\x00" * 10_000: 1}), "messages[0].content[0]." + repr("\x00" * 64) + "...", "unrecognized"),
        (user({**text, "prompt_cache_breakpoint": {"mode": "explicit"}}),
         "messages[0].content[0].prompt_cache_breakpoint", "is not supported by Signalbox"),
        ([{"role": "assistant", "content": [{"type": "refusal", "refusal": "no", "text": "no"}]}],
         "messages[0].content[0].text", "unrecognized"),
        (assistant({**call, "index": 0}), "messages[0].tool_calls[0].index", "unrecognized"),
        (assistant({**call, "function": {**function, "parameters": {}}}),
         "messages[0].tool_calls[0].function.parameters", "unrecognized"),
        (assistant({"id": "c", "type": "custom", "custom": {"name": "g", "input": "x"}}),
         "messages[0].tool_calls[0].custom", "is not supported by Signalbox"),
    ]  # fmt: skip
    for refused, param, says in cases:
        await _refused(sdk, param, says, messages=refused)
    # null is taken where the key is one this door does not implement
    nulled = await sdk.chat.completions.create(
        model="sim-fast", messages=user({**text, "prompt_cache_breakpoint": None})
    )
    assert nulled.choices[0].message.content
