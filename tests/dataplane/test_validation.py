"""Bounds on the JSON a request carries, bounded messages, and the schema verdict cache."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from concurrent.futures import ProcessPoolExecutor

import grpc
import pytest

from dataplane import validation
from dataplane.chat import ChatRequest, Message, ResponseFormat, Role, TextPart, ToolChoice, ToolDefinition
from dataplane.edge import openai
from dataplane.edge.infer import MAX_JSON_BYTES, MAX_JSON_DEPTH, parse_json
from dataplane.edge.json_bounds import MAX_JSON_CONTAINERS
from dataplane.errors import MAX_MESSAGE_CHARS, CheckUnavailable, InvalidRequest, NotFound, clipped, shown
from dataplane.outcome import to_status
from dataplane.validation import UNKNOWN, SchemaVerdicts, check_schemas, check_schemas_now, validate_chat
from tests.helpers import eventually


def _nested(depth: int) -> str:
    """An object nested ``depth`` levels: {"a": {"a": ... {} ...}}."""
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def _request(*schemas: dict[str, object], response: dict[str, object] | None = None) -> ChatRequest:
    tools = tuple(ToolDefinition(f"t{i}", "", schema) for i, schema in enumerate(schemas))
    rf = ResponseFormat("json_schema", "answer", response) if response is not None else None
    return ChatRequest((Message(Role.USER, (TextPart("hi"),)),), tools, response_format=rf)


# ---- parse_json: size, depth, finite numbers


def test_json_at_the_depth_limit_parses_and_one_more_level_is_refused() -> None:
    assert parse_json(_nested(MAX_JSON_DEPTH), "f", "JSON schema")
    with pytest.raises(
        InvalidRequest, match=r"^f: JSON schema is nested deeper than the limit of 64 levels$"
    ):
        parse_json(_nested(MAX_JSON_DEPTH + 1), "f", "JSON schema")
    assert parse_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "f", "x")


def test_a_body_at_the_depth_limit_parses_and_one_more_level_is_refused() -> None:
    """The HTTP door's body: exactly as many brackets as levels, at and over the limit, and
    many brackets (in strings, and side by side) over a shallow body."""
    assert openai.loads(_nested(MAX_JSON_DEPTH).encode())
    assert openai.loads(("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode())
    for deep in (_nested(MAX_JSON_DEPTH + 1), "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)):
        with pytest.raises(
            InvalidRequest, match=r"^body: request body is nested deeper than the limit of 64 levels$"
        ):
            openai.loads(deep.encode())
    wide = {"messages": [{"content": "{[" * 500} for _ in range(100)], "n": [[1], [2], {"a": []}]}
    assert openai.loads(json.dumps(wide).encode()) == wide


def test_a_body_whose_brackets_are_counted_is_not_walked_for_its_depth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_JSON_CONTAINERS brackets (here in a string: a body the count lets through),
    the count measures the nesting too: the parsed value, whose walk visits every value (a
    third of the cost of refusing four million strings), is not walked for it."""
    walked: list[object] = []

    def walk(value: object, limit: int) -> bool:
        walked.append(value)
        return False

    monkeypatch.setattr(openai, "_depth_exceeds", walk)
    brackets = "[" * (MAX_JSON_CONTAINERS + 1)
    body = {"a": brackets, "b": json.loads(_nested(MAX_JSON_DEPTH - 1)), "c": ["x"] * 1000}
    assert openai.loads(json.dumps(body).encode()) == body
    deeper = {**body, "b": json.loads(_nested(MAX_JSON_DEPTH))}
    with pytest.raises(
        InvalidRequest, match=r"^body: request body is nested deeper than the limit of 64 levels$"
    ):
        openai.loads(json.dumps(deeper).encode())
    assert walked == []
    openai.loads(json.dumps({**body, "a": "["}).encode())  # a body the count does not measure
    assert walked


@pytest.mark.parametrize("depth", [1_000, 30_000])
def test_json_nested_thousands_of_levels_is_the_depth_error_not_a_recursion_error(depth: int) -> None:
    for text in (_nested(depth), "[" * depth + "]" * depth):
        with pytest.raises(InvalidRequest, match="nested deeper than the limit of 64 levels"):
            parse_json(text, "tools[0].parameters_json_schema", "JSON schema")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999999", "-1e400"])
def test_non_finite_numbers_are_refused_naming_the_field(literal: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json(
            f'{{"type": "number", "maximum": {literal}}}', "tools[2].parameters_json_schema", "JSON schema"
        )
    assert str(info.value).startswith(
        "tools[2].parameters_json_schema: JSON schema contains the non-finite number"
    )
    assert literal in str(info.value)


def test_an_integer_beyond_the_digit_limit_is_invalid_not_internal() -> None:
    with pytest.raises(InvalidRequest, match=r"^args: arguments is not acceptable JSON"):
        parse_json('{"n": ' + "9" * 5000 + "}", "args", "arguments")


def test_json_over_the_size_limit_is_refused_before_parsing() -> None:
    text = json.dumps({"description": "x" * MAX_JSON_BYTES})
    with pytest.raises(
        InvalidRequest, match=rf"is {len(text)} bytes, more than the limit of {MAX_JSON_BYTES}"
    ):
        parse_json(text, "response_format.json_schema", "JSON schema")
    # Counted in UTF-8 bytes: 100,000 three-byte characters are over the limit.
    with pytest.raises(InvalidRequest, match="more than the limit"):
        parse_json(json.dumps({"d": "€" * 100_000}, ensure_ascii=False), "f", "x")


# ---- bounded messages


def test_shown_clips_and_escapes_control_characters() -> None:
    assert shown("abc") == "'abc'"
    assert shown("a\nb\x00c\x1b") == "'a\\nb\\x00c\\x1b'"
    long = shown("m" * 1_000_000)
    assert long == "'" + "m" * 64 + "'..."
    assert len(shown("\x00" * 10_000, 16)) < 80


def test_every_status_message_is_bounded() -> None:
    outcome = to_status(NotFound(f"model: unknown model {'x' * 1_000_000}"))
    assert outcome.code is grpc.StatusCode.NOT_FOUND
    assert len(outcome.message) <= MAX_MESSAGE_CHARS
    assert outcome.message.endswith("(message clipped)")
    assert clipped("short") == "short"


def test_a_tool_choice_naming_a_huge_unknown_tool_is_echoed_clipped() -> None:
    request = _request({"type": "object"})
    request = ChatRequest(
        request.messages,
        request.tools,
        tool_choice=ToolChoice("tool", "n" * 1_000_000),
    )
    with pytest.raises(InvalidRequest) as info:
        validate_chat(request, schemas=False)
    assert str(info.value) == f"tool_choice.tool_name: no tool named {shown('n' * 1_000_000)} in tools"


# ---- the schema verdict cache


async def test_check_schemas_names_the_invalid_schema_and_remembers_the_verdict() -> None:
    verdicts = SchemaVerdicts()
    bad = {"type": "no-such-type"}
    request = _request({"type": "object"}, bad)
    for _ in range(2):  # the second answer comes from the cache
        with pytest.raises(
            InvalidRequest, match=r"^tools\[1\].parameters_json_schema: not a valid JSON Schema"
        ):
            await check_schemas(request, verdicts)
    assert len(verdicts) == 2
    with pytest.raises(InvalidRequest, match=r"^response_format.json_schema: not a valid JSON Schema"):
        check_schemas_now(_request(response=bad), verdicts)
    await check_schemas(_request({"type": "object", "properties": {"a": {"type": "string"}}}), verdicts)


async def test_the_cache_holds_digests_within_its_budget_never_schemas() -> None:
    """300 distinct schemas of about 200 KiB each: the cache stays within its byte budget
    by its own accounting, each entry costs a digest and a verdict, not the schema."""
    verdicts = SchemaVerdicts(budget=64 * 1024)
    for i in range(300):
        schema = {"type": "object", "description": f"{i:04d}" + "x" * 200_000}
        await check_schemas(_request(schema), verdicts)
        assert verdicts.bytes <= verdicts.budget
    assert 0 < len(verdicts) < 300
    assert verdicts.bytes == len(verdicts) * SchemaVerdicts.cost(None)
    assert SchemaVerdicts.cost(None) < 512
    assert SchemaVerdicts.cost("x" * 300) < 1024


def test_the_cache_forgets_the_least_recently_used_first() -> None:
    verdicts = SchemaVerdicts(budget=3 * SchemaVerdicts.cost(None))
    for key in (b"a", b"b", b"c"):
        verdicts.put(key, None)
    assert verdicts.get(b"a") is None  # a is now the most recently used
    verdicts.put(b"d", "bad")
    assert verdicts.get(b"b") is UNKNOWN
    assert verdicts.get(b"a") is None
    assert verdicts.bytes <= verdicts.budget


async def test_a_checker_that_dies_is_unavailable_for_its_request_and_replaced_for_the_next() -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(4_000)}}
    checking = asyncio.ensure_future(check_schemas(_request(big), SchemaVerdicts()))

    def workers() -> list[int]:
        pool = validation._pool
        assert isinstance(pool, ProcessPoolExecutor)
        return [p.pid for p in (pool._processes or {}).values() if p.pid is not None]

    for pid in await eventually(workers, message="the checker process started"):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(CheckUnavailable, match="schema checker stopped"):
        await checking
    await check_schemas(_request({"type": "object", "title": str(uuid.uuid4())}), SchemaVerdicts())
