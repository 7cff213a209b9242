"""The input estimate counts what the provider counts as input: message text, tool calls,
images, tool definitions and the response schema. It was message text alone, so a request
with large tool schemas or many images reserved a fraction of what it then cost (concurrent
ones passed a budget) and was routed to models whose window could not hold it."""

from __future__ import annotations

import json

from dataplane.chat import (
    ChatRequest,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    TextPart,
    ToolCall,
    ToolDefinition,
)
from dataplane.routing.query import IMAGE_TOKENS, estimate_tokens

SCHEMA = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(200)}}


def _user(*parts: TextPart | ImagePart) -> Message:
    return Message(Role.USER, tuple(parts))


def test_text_alone_is_four_characters_a_token() -> None:
    assert estimate_tokens(ChatRequest(messages=(_user(TextPart("x" * 400)),))) == 100


def test_images_tools_tool_calls_and_the_response_schema_are_input_too() -> None:
    text = ChatRequest(messages=(_user(TextPart("x" * 400)),))
    with_images = ChatRequest(
        messages=(
            _user(
                TextPart("x" * 400), ImagePart(url="https://example.com/a.png"), ImagePart(data=b"\x89PNG")
            ),
        )
    )
    assert estimate_tokens(with_images) == 100 + 2 * IMAGE_TOKENS
    schema_chars = len(json.dumps(SCHEMA, separators=(",", ":")))
    with_tools = ChatRequest(messages=text.messages, tools=(ToolDefinition("lookup", "find it", SCHEMA),))
    assert estimate_tokens(with_tools) == (400 + len("lookup") + len("find it") + schema_chars) // 4
    with_schema = ChatRequest(
        messages=text.messages, response_format=ResponseFormat("json_schema", "r", SCHEMA)
    )
    assert estimate_tokens(with_schema) == (400 + schema_chars) // 4
    call = Message(Role.ASSISTANT, (), tool_calls=(ToolCall("c1", "lookup", '{"q": "' + "y" * 392 + '"}'),))
    assert estimate_tokens(ChatRequest(messages=(*text.messages, call))) > 200
