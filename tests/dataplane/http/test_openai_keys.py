"""Keys inside a chat body's objects, read with the official ``openai`` SDK: every key its
own param types define is taken (or refused as not supported, by name); a key OpenAI does
not define is refused as "unrecognized request argument", named by its full path."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from openai.types import embedding_create_params as embed_param
from openai.types.chat import (
    ChatCompletionAllowedToolChoiceParam,
    ChatCompletionAssistantMessageParam,
    ChatCompletionContentPartImageParam,
    ChatCompletionContentPartRefusalParam,
    ChatCompletionContentPartTextParam,
    ChatCompletionCustomToolParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageCustomToolCallParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceCustomParam,
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionStreamOptionsParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.chat import chat_completion_content_part_image_param as image_param
from openai.types.chat import chat_completion_message_function_tool_call_param as call_param
from openai.types.chat import chat_completion_named_tool_choice_param as choice_param
from openai.types.chat import completion_create_params as create_param
from openai.types.shared_params import (
    FunctionDefinition,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseFormatText,
)
from openai.types.shared_params import response_format_json_schema as schema_param

from dataplane.edge import openai_fields as door
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
        (assistant({**call, "call_id": "c"}), "messages[0].tool_calls[0].call_id", "unrecognized"),
        (assistant({**call, "index": "0"}), "messages[0].tool_calls[0].index", "must be an integer"),
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


async def test_tool_calls_joined_from_a_streamed_answer_are_carried_on_as_they_came(
    sdk: openai.AsyncOpenAI, simulator: Any
) -> None:
    # A client joining a streamed answer's tool-call deltas (model_dump of the first, the
    # arguments appended) carries each call's index on, as OpenAI takes it: it was refused
    # as an unrecognized argument.
    asked: list[ChatCompletionMessageParam] = [{"role": "user", "content": "use the look tool for it"}]
    look: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {
            "name": "look",
            "parameters": {"type": "object", "properties": {"at": {"type": "string"}}},
        },
    }
    calls: dict[int, dict[str, Any]] = {}
    async for chunk in await sdk.chat.completions.create(
        model="sim-fast", messages=asked, tools=[look], stream=True
    ):
        for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            if delta.index not in calls:
                calls[delta.index] = delta.model_dump(exclude_none=True)
            else:
                calls[delta.index]["function"]["arguments"] += (
                    delta.function and delta.function.arguments
                ) or ""
    (joined,) = calls.values()
    assert joined["index"] == 0
    answer: Any = {"role": "assistant", "content": None, "tool_calls": [joined]}
    tool: ChatCompletionToolMessageParam = {"role": "tool", "tool_call_id": joined["id"], "content": "seen"}
    served = await sdk.chat.completions.create(
        model="sim-fast", messages=[*asked, answer, tool], tools=[look]
    )
    assert "seen" in (served.choices[0].message.content or "")
    sent = simulator.stats("sim-fast").last_request["messages"][1]["tool_calls"]
    assert sent == [{k: v for k, v in joined.items() if k != "index"}]


async def test_keys_inside_tools_tool_choice_response_format_and_stream_options_are_checked(
    sdk: openai.AsyncOpenAI, simulator: Any
) -> None:
    # Unknown keys inside tools and their function, a tool_choice object, response_format
    # and its json_schema, and stream_options were ignored: a misspelt "parameter" sent a
    # tool with no parameters, a misspelt "schema_" no schema, and any JSON rode along.
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "weather", "description": "today's", "parameters": schema, "strict": True},
    }
    bare: ChatCompletionFunctionToolParam = {"type": "function", "function": {"name": "bare"}}
    choice: ChatCompletionNamedToolChoiceParam = {"type": "function", "function": {"name": "weather"}}
    fmt: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "city", "description": "a city", "schema": schema, "strict": True},
    }
    options: ChatCompletionStreamOptionsParam = {"include_usage": True, "include_obfuscation": False}
    chunks = await sdk.chat.completions.create(
        model="sim-fast", messages=[HI], tools=[tool, bare], tool_choice=choice, stream=True,
        stream_options=options,
    )  # fmt: skip
    assert [c async for c in chunks][-1].usage is not None
    sent = simulator.stats("sim-fast").last_request
    assert sent["tools"][0]["function"]["parameters"] == schema
    assert sent["tool_choice"] == choice
    served = await sdk.chat.completions.create(model="sim-fast", messages=[HI], response_format=fmt)
    assert served.choices[0].message.content
    assert simulator.stats("sim-fast").last_request["response_format"]["json_schema"]["schema"] == schema

    function = tool["function"]
    spec = fmt["json_schema"]
    cases = [
        ({"tools": [bare, {**tool, "cache_control": {}}]}, "tools[1].cache_control", "unrecognized request argument"),
        ({"tools": [{**tool, "function": {**function, "parameter": {}}}]}, "tools[0].function.parameter",
         "unrecognized"),
        ({"tools": [{**tool, "\x00" * 10_000: 1}]}, "tools[0]." + repr("\x00" * 64) + "...", "unrecognized"),
        ({"tools": [{"type": "custom", "custom": {"name": "g"}}]}, "tools[0].custom", "is not supported by Signalbox"),
        ({"tools": [tool], "tool_choice": {**choice, "name": "weather"}}, "tool_choice.name", "unrecognized"),
        ({"tools": [tool], "tool_choice": {**choice, "function": {"name": "weather", "strict": True}}},
         "tool_choice.function.strict", "unrecognized"),
        ({"tools": [tool], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
         "tool_choice.allowed_tools", "is not supported by Signalbox"),
        ({"tools": [tool], "tool_choice": {"type": "custom", "custom": {"name": "g"}}}, "tool_choice.custom",
         "is not supported by Signalbox"),
        ({"response_format": {**fmt, "strict": True}}, "response_format.strict", "unrecognized"),
        ({"response_format": {**fmt, "json_schema": {**spec, "schema_": {}}}}, "response_format.json_schema.schema_",
         "unrecognized"),
        ({"response_format": {**fmt, "json_schema": {**spec, "description": 5}}},
         "response_format.json_schema.description", "must be a string"),
        ({"response_format": {"type": "json_object", "json_schema": spec}}, "response_format.json_schema",
         "only allowed when type is json_schema"),
        ({"stream": True, "stream_options": {"include_usage": True, "usage": True}}, "stream_options.usage",
         "unrecognized"),
        ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation",
         "is not supported by Signalbox"),
    ]  # fmt: skip
    for fields, param, says in cases:
        await _refused(sdk, param, says, **fields)


def _keys(*types: Any) -> frozenset[str]:
    return frozenset(key for kind in types for key in typing.get_type_hints(kind))


def test_every_key_the_sdks_param_types_define_is_taken_or_refused_by_name() -> None:
    # Each object's keys, as the installed SDK defines them, are exactly what this door
    # takes or refuses as not supported: a key the SDK gains fails here, not for a caller
    # as "unrecognized". Beyond the SDK: an answer's annotations, a streamed tool call's
    # index, and the embeddings' metadata (routing hints).
    def taken(allowed: frozenset[str], unsupported: frozenset[str] = frozenset()) -> frozenset[str]:
        return allowed | unsupported

    tables = [
        (_keys(create_param.CompletionCreateParamsStreaming), taken(door.CHAT_FIELDS, door.UNSUPPORTED)),
        (_keys(ChatCompletionContentPartTextParam), taken(*door.PART_FIELDS["text"])),
        (_keys(ChatCompletionContentPartImageParam), taken(*door.PART_FIELDS["image_url"])),
        (_keys(ChatCompletionContentPartRefusalParam), taken(*door.PART_FIELDS["refusal"])),
        (_keys(image_param.ImageURL), door.IMAGE_FIELDS),
        (_keys(ChatCompletionMessageFunctionToolCallParam, ChatCompletionMessageCustomToolCallParam) | {"index"},
         taken(door.CALL_FIELDS, door.CUSTOM)),
        (_keys(call_param.Function), door.CALLED_FIELDS),
        (_keys(ChatCompletionFunctionToolParam, ChatCompletionCustomToolParam), taken(door.TOOL_FIELDS, door.CUSTOM)),
        (_keys(FunctionDefinition), door.FUNCTION_FIELDS),
        (_keys(ChatCompletionNamedToolChoiceParam, ChatCompletionNamedToolChoiceCustomParam,
               ChatCompletionAllowedToolChoiceParam), taken(door.TOOL_FIELDS, door.CHOICE_UNSUPPORTED)),
        (_keys(choice_param.Function), door.CHOSEN_FIELDS),
        (_keys(ResponseFormatText, ResponseFormatJSONObject, ResponseFormatJSONSchema), door.FORMAT_FIELDS),
        (_keys(schema_param.JSONSchema), door.SCHEMA_FIELDS),
        (_keys(ChatCompletionStreamOptionsParam), taken(door.STREAM_OPTIONS, door.STREAM_UNSUPPORTED)),
        (_keys(embed_param.EmbeddingCreateParams) | {"metadata"}, door.EMBED_FIELDS),
    ]  # fmt: skip
    for defined, known in tables:
        assert defined == known, (sorted(defined - known), sorted(known - defined))


async def test_every_image_detail_the_sdk_defines_is_taken_and_sent_on(
    sdk: openai.AsyncOpenAI, simulator: Any
) -> None:
    # "original" (OpenAI's detail for an image not downscaled) was refused as "must be auto,
    # low or high"; the door's values are the SDK's, no more.
    defined = typing.get_args(typing.get_type_hints(image_param.ImageURL)["detail"])
    for detail in defined:
        image: ChatCompletionContentPartImageParam = {
            "type": "image_url",
            "image_url": {"url": PNG, "detail": detail},
        }
        served = await sdk.chat.completions.create(
            model="sim-fast", messages=[{"role": "user", "content": [image]}]
        )
        assert served.choices[0].message.content
        sent = simulator.stats("sim-fast").last_request["messages"][0]["content"][0]
        assert sent["image_url"]["detail"] == detail
    wrong = {"type": "image_url", "image_url": {"url": PNG, "detail": "ultra"}}
    await _refused(
        sdk, "messages[0].content[0].image_url.detail", "must be auto, low, high or original",
        messages=[{"role": "user", "content": [wrong]}],
    )  # fmt: skip
    assert set(defined) == set(door.IMAGE_DETAILS)


def test_each_roles_message_keys_are_its_sdk_param_types() -> None:
    # One table for every role's message took any role's keys in each: a tool_call_id on a
    # user message, tool_calls on a system message, a name on a tool's were ignored. Each
    # role's keys are now its own SDK type's (an assistant's also its answer's annotations),
    # and every role the SDK defines is taken or refused by name.
    roles = {}
    for kind in typing.get_args(ChatCompletionMessageParam):
        (role,) = typing.get_args(typing.get_type_hints(kind)["role"])
        roles[role] = _keys(kind) | ({"annotations"} if role == "assistant" else set())
    assert set(roles) == set(door.MESSAGE_FIELDS) | door.UNSUPPORTED_ROLES
    for role, (allowed, unsupported) in door.MESSAGE_FIELDS.items():
        assert roles[role] == allowed | unsupported, role


async def test_a_key_of_another_roles_message_is_refused_by_its_path(
    sdk: openai.AsyncOpenAI, simulator: Any
) -> None:
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "look", "arguments": "{}"},
    }
    asked: ChatCompletionAssistantMessageParam = {
        "role": "assistant", "content": None, "tool_calls": [call], "name": "helper", "refusal": None,
        "audio": None, "function_call": None,
    }  # fmt: skip
    answered: ChatCompletionToolMessageParam = {"role": "tool", "tool_call_id": "call_1", "content": "seen"}
    served = await sdk.chat.completions.create(
        model="sim-fast",
        messages=[{"role": "system", "content": "be brief", "name": "rules"}, HI, asked, answered],
    )
    assert served.choices[0].message.content
    cases = [
        ({**HI, "tool_call_id": "call_1"}, "tool_call_id", "unrecognized request argument"),
        ({**HI, "tool_calls": [call]}, "tool_calls", "unrecognized request argument"),
        ({**HI, "tool_calls": None}, "tool_calls", "unrecognized request argument"),
        ({"role": "system", "content": "x", "tool_calls": [call]}, "tool_calls", "unrecognized"),
        ({"role": "developer", "content": "x", "refusal": "no"}, "refusal", "unrecognized"),
        ({**HI, "audio": {"id": "a"}}, "audio", "unrecognized"),
        ({**HI, "annotations": []}, "annotations", "unrecognized"),
        ({**answered, "name": "look"}, "name", "unrecognized"),
        ({**answered, "refusal": None}, "refusal", "unrecognized"),
        ({**asked, "tool_call_id": "call_1"}, "tool_call_id", "unrecognized"),
        ({**asked, "audio": {"id": "a"}}, "audio", "is not supported by Signalbox"),
        ({"role": "function", "name": "look", "content": "seen"}, "role", "function is not supported by Signalbox"),
    ]  # fmt: skip
    for message, key, says in cases:
        await _refused(sdk, f"messages[1].{key}", says, messages=[HI, message])
