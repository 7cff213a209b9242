"""OpenAI chat-completions / embeddings JSON -> plain values: the HTTP front door's edge, inbound.

Inbound, a body is read strictly: every field OpenAI defines is either converted or
refused by name (``InvalidRequest`` with the field's path, e.g. ``messages[2].content[0].type``);
a field OpenAI does not define is refused like OpenAI does ("unrecognized request
argument"), so a client's typo never silently changes an answer. Range checks are
``validation``'s, shared with gRPC. Routing hints come from ``x-signalbox-*`` headers and
the ``metadata`` body field.

Outbound (answers in OpenAI's exact shapes) is ``dataplane.edge.openai_answers``.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from dataplane.chat import (
    ChatRequest,
    ContentPart,
    EmbedRequest,
    GenerationParams,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)
from dataplane.config.model import Capability, DataClass
from dataplane.edge.infer import (
    MAX_JSON_DEPTH,
    MAX_SCHEMA_CHARS,
    MAX_TOOLS,
    _depth_exceeds,
    check_metadata,
    image_from_url,
    json_object,
)
from dataplane.edge.json_bounds import MAX_JSON_CONTAINERS, json_shape
from dataplane.edge.openai_fields import (
    CALL_FIELDS,
    CALLED_FIELDS,
    CHAT_FIELDS,
    CHOICE_UNSUPPORTED,
    CHOSEN_FIELDS,
    CUSTOM,
    EMBED_FIELDS,
    FORMAT_FIELDS,
    FUNCTION_FIELDS,
    IMAGE_FIELDS,
    MESSAGE_FIELDS,
    PART_FIELDS,
    SCHEMA_FIELDS,
    STREAM_OPTIONS,
    STREAM_UNSUPPORTED,
    TOOL_FIELDS,
    UNSUPPORTED,
    UNSUPPORTED_ROLES,
    known_fields,
)
from dataplane.errors import InvalidRequest, shown
from dataplane.routing.query import AUTO_MODEL, Hints
from dataplane.validation import MAX_EMBED_INPUTS, MAX_MESSAGES, check_counts, check_stop_count

_CALLER_IDS = ("user", "safety_identifier", "prompt_cache_key")
"""Strings that identify the caller's end user to OpenAI (the last two replace ``user``):
checked, not sent on, as no provider here takes them as OpenAI does."""
_ROLES = {r.value: r for r in Role}
_TEXT_ROLES = {r.value: r for r in Role if r is not Role.TOOL}
"""The roles whose message may be only ``role`` and ``content`` (a tool's also names its call)."""
_DATA_CLASSES = {c.name.lower(): c for c in DataClass if c is not DataClass.UNSPECIFIED}
_CAPABILITIES = {c.value: c for c in Capability}


def loads(body: bytes, what: str = "request body", bounds: Callable[[Any], None] | None = None) -> Any:
    """The JSON of a body; ``InvalidRequest`` naming the body when it holds more objects and
    arrays than ``MAX_JSON_CONTAINERS`` (before it is parsed: ``json_bounds``), when it is not
    JSON, or what ``bounds`` (``chat_counts``, ``embed_counts``) refuses, before the body is
    walked."""
    too_many, too_deep = json_shape(body, MAX_JSON_CONTAINERS, MAX_JSON_DEPTH)
    if too_many:
        raise InvalidRequest(
            "body", f"{what} holds more than the limit of {MAX_JSON_CONTAINERS} JSON objects and arrays"
        )
    if too_deep:
        raise _too_deep_body(what)
    # Without the cyclic collector meanwhile: it ran hundreds of times over the containers
    # being built (0.12 s of the parse of 200,000 arrays), none of which can be garbage yet.
    collecting = gc.isenabled()
    gc.disable()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("body", f"{what} is not valid JSON ({shown(str(exc), 100)})") from exc
    finally:
        if collecting:
            gc.enable()
    if bounds is not None:
        bounds(value)
    # Each level of nesting opens with a bracket: a body with no more of them than the limit
    # (any ordinary request) cannot exceed it, and counting bytes costs a seventh of the walk.
    unknown = too_deep is None and body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH
    if unknown and _depth_exceeds(value, MAX_JSON_DEPTH):
        raise _too_deep_body(what)
    return value


def _too_deep_body(what: str) -> InvalidRequest:
    return InvalidRequest("body", f"{what} is nested deeper than the limit of {MAX_JSON_DEPTH} levels")


def chat_counts(body: Any) -> None:
    """A chat body's counts within their limits (``loads``' bounds): messages, their content
    parts and tool calls, tools and stop sequences, read from the parsed JSON before it is
    walked or a message is converted. A value of the wrong type is left to the decode."""
    if type(body) is not dict:
        return
    messages = body.get("messages")
    if type(messages) is list:
        check_counts(len(messages), map(_sizes, messages[:MAX_MESSAGES]))
    tools = body.get("tools")
    if type(tools) is list and len(tools) > MAX_TOOLS:
        raise InvalidRequest("tools", f"{len(tools)} tools, more than the limit of {MAX_TOOLS}")
    stop = body.get("stop")
    if type(stop) is list:
        check_stop_count(len(stop), "stop")


def _sizes(message: Any) -> tuple[int, int]:
    """(content parts, tool calls) of a message as sent."""
    if type(message) is not dict:
        return 0, 0
    content, calls = message.get("content"), message.get("tool_calls")
    return len(content) if type(content) is list else 0, len(calls) if type(calls) is list else 0


def embed_counts(body: Any) -> None:
    """An embeddings body's inputs within their limit (``loads``' bounds)."""
    inputs = body.get("input") if type(body) is dict else None
    if type(inputs) is list and len(inputs) > MAX_EMBED_INPUTS:
        raise InvalidRequest("input", f"at most {MAX_EMBED_INPUTS} inputs per request")


# ---- small typed readers: each names the field it refuses ----


def _typed(value: Any, field: str, kind: type, what: str) -> Any:
    if type(value) is not kind:
        raise InvalidRequest(field, f"must be {what}, not {_kind(value)}")
    return value


def _object(value: Any, field: str) -> dict[str, Any]:
    return _typed(value, field, dict, "an object")  # type: ignore[no-any-return]


def _list(value: Any, field: str) -> list[Any]:
    return _typed(value, field, list, "an array")  # type: ignore[no-any-return]


def _str(value: Any, field: str) -> str:
    return _typed(value, field, str, "a string")  # type: ignore[no-any-return]


def _bool(value: Any, field: str) -> bool:
    return _typed(value, field, bool, "true or false")  # type: ignore[no-any-return]


def _int(value: Any, field: str, low: int = -(2**63), high: int = 2**63 - 1) -> int:
    """An integer in [low, high]: by default int64, the gRPC door's widest (the doors take the same)."""
    number: int = _typed(value, field, int, "an integer")
    if not low <= number <= high:
        raise InvalidRequest(field, f"must be an integer in [{low}, {high}]")
    return number


_UINT32 = 2**32 - 1
"""The gRPC door's ``max_output_tokens`` and ``dimensions`` are uint32."""


def _number(value: Any, field: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise InvalidRequest(field, f"must be a finite number, not {_kind(value)}")
    return float(value)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "a number"


# ---- chat ----


def _image(part: dict[str, Any], field: str) -> ImagePart:
    image = _object(part.get("image_url"), f"{field}.image_url")
    known_fields(image, IMAGE_FIELDS, where=f"{field}.image_url.")
    url = _str(image.get("url"), f"{field}.image_url.url")
    return image_from_url(url, image.get("detail") or "", f"{field}.image_url")


def _content(value: Any, field: str, *, images: bool, refusals: bool = False) -> tuple[ContentPart, ...]:
    """``refusals``: an assistant's content, whose parts may also be OpenAI's ``refusal``
    parts (what it said when it declined): kept as its text."""
    if value is None:
        return ()
    if type(value) is str:
        return (TextPart(value),)
    parts: list[ContentPart] = []
    for i, part in enumerate(_list(value, field)):
        where = f"{field}[{i}]"
        part = _object(part, where)
        kind = part.get("type")
        if type(kind) is str and kind in PART_FIELDS:
            # Ignored, any key rode along unread (a provider's cache_control among them).
            known_fields(part, *PART_FIELDS[kind], f"{where}.")
        if kind == "text":
            parts.append(TextPart(_str(part.get("text"), f"{where}.text")))
        elif kind == "refusal" and refusals:
            parts.append(TextPart(_str(part.get("refusal"), f"{where}.refusal")))
        elif kind == "image_url" and images:
            parts.append(_image(part, where))
        elif kind == "image_url":
            raise InvalidRequest(f"{where}.type", "images are allowed in user messages only")
        else:
            others = " or image_url" if images else " or refusal" if refusals else ""
            raise InvalidRequest(f"{where}.type", f"must be text{others}")
    return tuple(parts)


def _tool_calls(value: Any, field: str) -> tuple[ToolCall, ...]:
    calls = []
    for i, call in enumerate(_list(value, field)):
        where = f"{field}[{i}]"
        call = _object(call, where)
        known_fields(call, CALL_FIELDS, CUSTOM, f"{where}.")
        if call.get("index") is not None:
            _int(call["index"], f"{where}.index")
        if call.get("type", "function") != "function":
            raise InvalidRequest(f"{where}.type", "must be function")
        function = _object(call.get("function"), f"{where}.function")
        known_fields(function, CALLED_FIELDS, where=f"{where}.function.")
        name = _str(function.get("name"), f"{where}.function.name")
        if not name:
            raise InvalidRequest(f"{where}.function.name", "must not be empty")
        arguments = function.get("arguments")
        arguments = "{}" if arguments is None else _str(arguments, f"{where}.function.arguments")
        if arguments:
            # As gRPC reads arguments_json: within the size and depth bounds, an object. Unread,
            # 30,000 levels sent to a provider that takes them as an object (Anthropic) was a
            # RecursionError there: a 500 for the caller's mistake.
            json_object(arguments, f"{where}.function.arguments", "arguments")
        calls.append(ToolCall(_str(call.get("id", ""), f"{where}.id"), name, arguments or "{}"))
    return tuple(calls)


def _message(value: Any, index: int) -> Message:
    if type(value) is dict and len(value) == 2:
        # Most messages are just a role's text: the same Message the general path gives them
        # (their two keys are every role's but a tool's, which must name its call), at a
        # fraction of its cost.
        raw_role, content = value.get("role"), value.get("content")
        if type(raw_role) is str and type(content) is str and (role := _TEXT_ROLES.get(raw_role)) is not None:
            return Message(role, (TextPart(content),))
    return _any_message(value, f"messages[{index}]")


def _any_message(value: Any, field: str) -> Message:
    message = _object(value, field)
    # Only a string is looked up: an object or array is unhashable, and a lookup of one
    # raised TypeError, which the caller saw as a 500 for a bad body.
    raw_role = message.get("role")
    role = _ROLES.get(raw_role) if type(raw_role) is str else None
    if role is None:
        if type(raw_role) is str and raw_role in UNSUPPORTED_ROLES:
            raise InvalidRequest(f"{field}.role", f"{raw_role} is not supported by Signalbox")
        raise InvalidRequest(f"{field}.role", "must be one of system, developer, user, assistant, tool")
    # Refused as OpenAI refuses them, each role's own keys only: ignored, a client's misspelt
    # key ("tool_call_ids") or another role's silently changed the conversation, and any
    # amount of JSON rode along unread.
    known_fields(message, *MESSAGE_FIELDS[role.value], f"{field}.")
    annotations = message.get("annotations")
    if annotations is not None:
        _list(annotations, f"{field}.annotations")
    name = message.get("name")
    name = "" if name is None else _str(name, f"{field}.name")
    assistant = role is Role.ASSISTANT
    content = _content(
        message.get("content"), f"{field}.content", images=role is Role.USER, refusals=assistant
    )
    refusal = message.get("refusal")
    if refusal is not None and not content:
        # OpenAI's answer when the model declines: content null, the words in refusal. A
        # conversation that carries it on (the SDK's message, appended as it is) was
        # refused as "content must not be empty".
        content = (TextPart(_str(refusal, f"{field}.refusal")),)
    calls: tuple[ToolCall, ...] = ()
    tool_call_id = ""
    if message.get("tool_calls") is not None:
        calls = _tool_calls(message["tool_calls"], f"{field}.tool_calls")
    if role is Role.TOOL:
        tool_call_id = _str(message.get("tool_call_id"), f"{field}.tool_call_id")
    return Message(role, content, calls, tool_call_id, name)


def _tools(value: Any) -> tuple[ToolDefinition, ...]:
    tools = _list(value, "tools")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest("tools", f"{len(tools)} tools, more than the limit of {MAX_TOOLS}")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        tool = _object(tool, where)
        known_fields(tool, TOOL_FIELDS, CUSTOM, f"{where}.")
        if tool.get("type") != "function":
            raise InvalidRequest(f"{where}.type", "must be function")
        function = _object(tool.get("function"), f"{where}.function")
        known_fields(function, FUNCTION_FIELDS, where=f"{where}.function.")
        name = _str(function.get("name"), f"{where}.function.name")
        if not name:
            raise InvalidRequest(f"{where}.function.name", "must not be empty")
        description = function.get("description")
        parameters = function.get("parameters")
        strict = function.get("strict")
        out.append(
            ToolDefinition(
                name,
                "" if description is None else _str(description, f"{where}.function.description"),
                {"type": "object", "properties": {}}
                if parameters is None
                else _object(parameters, f"{where}.function.parameters"),
                False if strict is None else _bool(strict, f"{where}.function.strict"),
            )
        )
    return tuple(out)


def _tool_choice(value: Any) -> ToolChoice:
    if value in ("auto", "none", "required"):
        return ToolChoice(value)
    if type(value) is dict:
        known_fields(value, TOOL_FIELDS, CHOICE_UNSUPPORTED, "tool_choice.")
        if value.get("type") != "function":
            raise InvalidRequest("tool_choice.type", "must be function")
        function = _object(value.get("function"), "tool_choice.function")
        known_fields(function, CHOSEN_FIELDS, where="tool_choice.function.")
        return ToolChoice("tool", _str(function.get("name"), "tool_choice.function.name"))
    raise InvalidRequest("tool_choice", 'must be "auto", "none", "required" or {"type": "function", ...}')


def _response_format(value: Any) -> ResponseFormat:
    fmt = _object(value, "response_format")
    known_fields(fmt, FORMAT_FIELDS, where="response_format.")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        if fmt.get("json_schema") is not None:
            # Ignored, a schema the caller meant to be kept to was not (a type left as "text").
            raise InvalidRequest("response_format.json_schema", "only allowed when type is json_schema")
        return ResponseFormat(kind)
    if kind != "json_schema":
        raise InvalidRequest("response_format.type", "must be text, json_object or json_schema")
    spec = _object(fmt.get("json_schema"), "response_format.json_schema")
    known_fields(spec, SCHEMA_FIELDS, where="response_format.json_schema.")
    description = spec.get("description")
    name = _str(spec.get("name", ""), "response_format.json_schema.name")
    schema = _object(spec.get("schema"), "response_format.json_schema.schema")
    strict = spec.get("strict")
    return ResponseFormat(
        "json_schema",
        name,
        schema,
        False if strict is None else _bool(strict, "response_format.json_schema.strict"),
        "" if description is None else _str(description, "response_format.json_schema.description"),
    )


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if type(value) is str:
        return (value,)
    stops = _list(value, "stop")
    # Before each is read: a body of a million stop sequences is refused, not converted.
    check_stop_count(len(stops), "stop")
    return tuple(_str(s, f"stop[{i}]") for i, s in enumerate(stops))


def _metadata(body: Mapping[str, Any]) -> dict[str, str]:
    value = body.get("metadata")
    if value is None:
        return {}
    metadata = _object(value, "metadata")
    check_metadata(metadata)
    return metadata


def _hints(model: str, headers: Mapping[str, str], metadata: Mapping[str, str]) -> Hints:
    """Routing hints: the model (``auto`` lets the policy choose) and ``x-signalbox-*`` headers."""
    data_class = DataClass.UNSPECIFIED
    if named := headers.get("x-signalbox-data-class", "").strip().lower():
        if named not in _DATA_CLASSES:
            raise InvalidRequest("x-signalbox-data-class", f"must be one of {', '.join(_DATA_CLASSES)}")
        data_class = _DATA_CLASSES[named]
    capabilities = set()
    for name in filter(
        None, (c.strip().lower() for c in headers.get("x-signalbox-capabilities", "").split(","))
    ):
        if name not in _CAPABILITIES:
            raise InvalidRequest(
                "x-signalbox-capabilities", f"{shown(name, 32)} is not one of {', '.join(_CAPABILITIES)}"
            )
        capabilities.add(_CAPABILITIES[name])
    return Hints(
        model="" if model == AUTO_MODEL else model,
        task=headers.get("x-signalbox-task", "").strip(),
        data_classification=data_class,
        metadata=metadata,
        capabilities=frozenset(capabilities),
    )


def _model(body: Mapping[str, Any]) -> str:
    if "model" not in body:
        raise InvalidRequest("model", 'is required (a model alias, or "auto" for the policy\'s choice)')
    return _str(body["model"], "model")


def is_stream(body: Mapping[str, Any]) -> bool:
    value = body.get("stream")
    return False if value is None else _bool(value, "stream")


def include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    options = _object(options, "stream_options")
    known_fields(options, STREAM_OPTIONS, STREAM_UNSUPPORTED, "stream_options.")
    value = options.get("include_usage")
    return False if value is None else _bool(value, "stream_options.include_usage")


def decode_chat(body: Any, headers: Mapping[str, str]) -> tuple[ChatRequest, Hints]:
    """A ``/v1/chat/completions`` body as the pipeline's request and routing hints."""
    body = _object(body, "body")
    known_fields(body, CHAT_FIELDS, UNSUPPORTED)
    model = _model(body)
    messages = tuple(_message(m, i) for i, m in enumerate(_list(body.get("messages"), "messages")))
    n = body.get("n")
    if n is not None and _int(n, "n") != 1:
        raise InvalidRequest("n", "only 1 choice per request is supported")
    if body.get("store") not in (None, False):
        raise InvalidRequest("store", "Signalbox does not store completions with the provider")
    for field in _CALLER_IDS:
        if body.get(field) is not None:
            _str(body[field], field)
    stream = is_stream(body)
    if body.get("stream_options") is not None and not stream:
        raise InvalidRequest("stream_options", "only allowed when stream is true")
    include_usage(body)
    tools = _tools(body["tools"]) if body.get("tools") is not None else ()
    response_format = (
        _response_format(body["response_format"]) if body.get("response_format") is not None else None
    )
    schema_chars = sum(len(orjson.dumps(t.parameters)) for t in tools)
    if response_format is not None and response_format.schema is not None:
        schema_chars += len(orjson.dumps(response_format.schema))
    if schema_chars > MAX_SCHEMA_CHARS:
        raise InvalidRequest(
            "tools",
            f"the request's JSON schemas (tools and response_format) are {schema_chars} characters in all,"
            f" more than the limit of {MAX_SCHEMA_CHARS}",
        )
    max_tokens = body.get("max_completion_tokens")
    max_field = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_field = body.get("max_tokens"), "max_tokens"
    elif body.get("max_tokens") is not None:
        # As OpenAI refuses it: one was silently dropped, so a caller setting max_tokens 10
        # beside max_completion_tokens 4000 got (and paid for) up to 4000.
        raise InvalidRequest("max_tokens", "cannot be set with max_completion_tokens; set one of them")
    parallel = body.get("parallel_tool_calls")
    params = GenerationParams(
        max_output_tokens=None if max_tokens is None else _int(max_tokens, max_field, 0, _UINT32),
        temperature=None if body.get("temperature") is None else _number(body["temperature"], "temperature"),
        top_p=None if body.get("top_p") is None else _number(body["top_p"], "top_p"),
        stop=_stop(body.get("stop")),
        seed=None if body.get("seed") is None else _int(body["seed"], "seed"),
        presence_penalty=None
        if body.get("presence_penalty") is None
        else _number(body["presence_penalty"], "presence_penalty"),
        frequency_penalty=None
        if body.get("frequency_penalty") is None
        else _number(body["frequency_penalty"], "frequency_penalty"),
        parallel_tool_calls=None if parallel is None else _bool(parallel, "parallel_tool_calls"),
    )
    tool_choice = _tool_choice(body["tool_choice"]) if body.get("tool_choice") is not None else None
    request = ChatRequest(messages, tools, tool_choice, params, response_format)
    return request, _hints(model, headers, _metadata(body))


def decode_embed(body: Any, headers: Mapping[str, str]) -> tuple[EmbedRequest, Hints]:
    """A ``/v1/embeddings`` body as the pipeline's request and routing hints."""
    body = _object(body, "body")
    known_fields(body, EMBED_FIELDS)
    model = _model(body)
    value = body.get("input")
    if type(value) is str:
        inputs: tuple[str, ...] = (value,)
    else:
        inputs = tuple(_str(s, f"input[{i}]") for i, s in enumerate(_list(value, "input")))
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise InvalidRequest("encoding_format", "must be float or base64")
    dimensions = body.get("dimensions")
    if body.get("user") is not None:
        _str(body["user"], "user")
    request = EmbedRequest(inputs, None if dimensions is None else _int(dimensions, "dimensions", 0, _UINT32))
    return request, _hints(model, headers, _metadata(body))


# ---- the shared validation's field names, as this door's callers name them ----

_WIRE_NAMES = {
    "params.temperature": "temperature",
    "params.top_p": "top_p",
    "params.presence_penalty": "presence_penalty",
    "params.frequency_penalty": "frequency_penalty",
    "params.stop": "stop",
    "tool_choice.tool_name": "tool_choice.function.name",
    "tool_choice.mode": "tool_choice",
    "inputs": "input",
}
_WIRE_PATTERNS = (
    (re.compile(r"tools\[(\d+)\]\.name"), r"tools[\1].function.name"),
    (re.compile(r"tools\[(\d+)\]\.parameters_json_schema"), r"tools[\1].function.parameters"),
    (re.compile(r"inputs\[(\d+)\]"), r"input[\1]"),
)


def wire_field(field: str, body: Any) -> str:
    """The field ``dataplane.validation`` refused (it names the pipeline's request, as gRPC
    spells it: ``params.max_output_tokens``, ``tools[0].name``, ``inputs``), as the
    OpenAI body it came from names it, so ``param`` points at what the caller sent. Names
    this module gives its own errors are returned as they are; none of them is a key here."""
    if field == "params.max_output_tokens":
        newer = isinstance(body, dict) and body.get("max_completion_tokens") is not None
        return "max_completion_tokens" if newer else "max_tokens"
    if field in _WIRE_NAMES:
        return _WIRE_NAMES[field]
    if field == "response_format.json_schema" and type(_json_schema(body)) is dict:
        # The validation's name for the schema; this module's own, for a json_schema that
        # is not an object, is the same text and stays as it is.
        return "response_format.json_schema.schema"
    if field == "inputs[0]" and isinstance(body, dict) and type(body.get("input")) is str:
        return "input"
    for pattern, replacement in _WIRE_PATTERNS:
        if match := pattern.fullmatch(field):
            return match.expand(replacement)
    return field


_HTTP_WORDING = (
    ("'Bearer <API key or JWT>' metadata", "'Bearer <API key or JWT>' header"),
    ("REQUIRED needs at least one tool", '"required" needs at least one tool in tools'),
    ("required when mode is TOOL", 'required when tool_choice is {"type": "function", ...}'),
    ("does not allow task ", "does not allow x-signalbox-task "),
    ("a request without a task ", "a request without an x-signalbox-task header "),
)
"""What the pipeline's messages say as gRPC says it (metadata, enum names, request fields),
as this door's callers name it (headers, body fields and values)."""


def http_wording(message: str) -> str:
    """A pipeline message in this door's words (``_HTTP_WORDING``): an OpenAI caller was told
    of "metadata" and of ``REQUIRED``, which it never sent."""
    for grpc, http in _HTTP_WORDING:
        if grpc in message:
            message = message.replace(grpc, http)
    return message


def _json_schema(body: Any) -> Any:
    """The body's ``response_format.json_schema``, whatever it is (None when absent, or when
    the format's type is not json_schema: this module refuses it there by its own name)."""
    response_format = body.get("response_format") if type(body) is dict else None
    if type(response_format) is not dict or response_format.get("type") != "json_schema":
        return None
    return response_format.get("json_schema")
