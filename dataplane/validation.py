"""Request checks that need no configuration; each failure names the field.

Run on the converted request (``dataplane.chat`` types). Checks that depend on
the chosen model (``max_output_tokens`` above its maximum) run after routing,
in the pipeline.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

from dataplane.chat import ChatRequest, EmbedRequest, Role
from dataplane.errors import InvalidRequest

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CORRELATION_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_MAX_STOP = 16
_MAX_EMBED_INPUTS = 2048


def correlation_id(value: str, field: str = "correlation_id") -> str:
    """Accept a caller-supplied id only if it is safe to echo in metadata and logs."""
    if not _CORRELATION_ID.match(value):
        raise InvalidRequest(field, "must be 1-128 printable ASCII characters without spaces")
    return value


def _check_range(value: float | None, field: str, low: float, high: float, *, low_open: bool = False) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidRequest(field, f"{value} is outside {bracket}{low:g}, {high:g}]")


def _check_schema(schema: dict[str, Any], field: str) -> None:
    problem = _schema_problem(json.dumps(schema, sort_keys=True))
    if problem is not None:
        raise InvalidRequest(field, problem)


@functools.lru_cache(maxsize=1024)
def _schema_problem(canonical: str) -> str | None:
    """Why a schema (as canonical JSON) is not a valid JSON Schema, or None.

    Checking a schema costs about 2 ms; callers send the same tool schemas with
    every request, so each distinct schema is checked once.
    """
    try:
        Draft202012Validator.check_schema(json.loads(canonical))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
    return None


def validate_chat(request: ChatRequest, *, require_messages: bool = True) -> None:
    """Raise ``InvalidRequest`` for the first problem found.

    ``require_messages=False`` accepts a request without messages (a dry run of
    routing asks about the policy alone); every other rule holds.
    """
    if require_messages and not request.messages:
        raise InvalidRequest("messages", "must not be empty")
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role is Role.TOOL and not message.tool_call_id:
            raise InvalidRequest(f"{where}.tool_call_id", "required for a tool message")
        if message.tool_calls and message.role is not Role.ASSISTANT:
            raise InvalidRequest(f"{where}.tool_calls", "only assistant messages carry tool calls")
        if not message.content and not message.tool_calls:
            raise InvalidRequest(f"{where}.content", "must not be empty")
    p = request.params
    if p.max_output_tokens is not None and p.max_output_tokens < 1:
        raise InvalidRequest("params.max_output_tokens", "must be at least 1")
    _check_range(p.temperature, "params.temperature", 0.0, 2.0)
    _check_range(p.top_p, "params.top_p", 0.0, 1.0, low_open=True)
    _check_range(p.presence_penalty, "params.presence_penalty", -2.0, 2.0)
    _check_range(p.frequency_penalty, "params.frequency_penalty", -2.0, 2.0)
    if len(p.stop) > _MAX_STOP:
        raise InvalidRequest("params.stop", f"at most {_MAX_STOP} stop sequences")
    if any(not s for s in p.stop):
        raise InvalidRequest("params.stop", "stop sequences must not be empty")
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        if not _TOOL_NAME.match(tool.name):
            raise InvalidRequest(f"tools[{i}].name", "must be 1-64 letters, digits, '_' or '-'")
        if tool.name in names:
            raise InvalidRequest(f"tools[{i}].name", f"duplicate tool {tool.name!r}")
        names.add(tool.name)
        _check_schema(tool.parameters, f"tools[{i}].parameters_json_schema")
    choice = request.tool_choice
    if choice is not None and choice.mode == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice.tool_name", "required when mode is TOOL")
        if choice.name not in names:
            raise InvalidRequest("tool_choice.tool_name", f"no tool named {choice.name!r} in tools")
    if choice is not None and choice.mode == "required" and not request.tools:
        raise InvalidRequest("tool_choice.mode", "REQUIRED needs at least one tool")
    rf = request.response_format
    if rf is not None and rf.schema is not None:
        _check_schema(rf.schema, "response_format.json_schema")


def validate(request: ChatRequest | EmbedRequest) -> None:
    """Raise ``InvalidRequest`` for the first problem of a chat or embeddings request."""
    if isinstance(request, EmbedRequest):
        validate_embed(request)
    else:
        validate_chat(request)


def validate_embed(request: EmbedRequest) -> None:
    if not request.inputs:
        raise InvalidRequest("inputs", "must not be empty")
    if len(request.inputs) > _MAX_EMBED_INPUTS:
        raise InvalidRequest("inputs", f"at most {_MAX_EMBED_INPUTS} inputs per request")
    for i, text in enumerate(request.inputs):
        if not text:
            raise InvalidRequest(f"inputs[{i}]", "must not be empty")
    if request.dimensions is not None and request.dimensions < 1:
        raise InvalidRequest("dimensions", "must be at least 1")
