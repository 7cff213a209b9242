"""Infer API protobuf <-> plain values: the one place the Infer API's messages are translated.

Used by the node's gRPC front door (``dataplane.api``) and by the control plane's
ExplainRoute, so a dry run reads a request exactly as a node does.

Inbound conversion parses the JSON the API carries as text (tool schemas, tool
call arguments, response schemas) and raises ``InvalidRequest`` naming the field
when it is malformed; range and consistency checks live in ``validation``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from itertools import compress, repeat
from typing import Any

from dataplane.accounting import Cost
from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    ContentPart,
    EmbedRequest,
    EmbedResponse,
    FinishReason,
    GenerationParams,
    ImagePart,
    Message,
    ResponseFormat,
    Role,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
    Usage,
)
from dataplane.config.model import DataClass
from dataplane.edge.openai_fields import IMAGE_DETAILS
from dataplane.errors import InvalidRequest, shown
from dataplane.pipeline.call import Opened, Served, StreamEvent
from dataplane.routing.candidate import Candidate
from dataplane.routing.dispatch import AttemptRecord
from dataplane.routing.query import AUTO_MODEL, Hints, RoutePlan
from dataplane.snapshot.compile import CAPABILITY_FROM_PROTO
from dataplane.validation import MAX_EMBED_INPUTS, MAX_MESSAGES, check_counts, check_stop_count
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2

ROLE_FROM_PROTO: dict[int, Role] = {
    infer_pb2.ROLE_SYSTEM: Role.SYSTEM,
    infer_pb2.ROLE_USER: Role.USER,
    infer_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    infer_pb2.ROLE_TOOL: Role.TOOL,
    infer_pb2.ROLE_DEVELOPER: Role.DEVELOPER,
}
ROLE_TO_PROTO: dict[Role, infer_pb2.Role.ValueType] = {v: k for k, v in ROLE_FROM_PROTO.items()}  # type: ignore[misc]

FINISH_TO_PROTO: dict[FinishReason | None, infer_pb2.FinishReason.ValueType] = {
    None: infer_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: infer_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: infer_pb2.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: infer_pb2.FINISH_REASON_TOOL_CALLS,
    FinishReason.CONTENT_FILTER: infer_pb2.FINISH_REASON_CONTENT_FILTER,
}

_TOOL_CHOICE: dict[int, str] = {
    infer_pb2.ToolChoice.MODE_UNSPECIFIED: "auto",
    infer_pb2.ToolChoice.MODE_AUTO: "auto",
    infer_pb2.ToolChoice.MODE_NONE: "none",
    infer_pb2.ToolChoice.MODE_REQUIRED: "required",
    infer_pb2.ToolChoice.MODE_TOOL: "tool",
}

_FORMAT: dict[int, str] = {
    infer_pb2.ResponseFormat.TYPE_UNSPECIFIED: "text",
    infer_pb2.ResponseFormat.TYPE_TEXT: "text",
    infer_pb2.ResponseFormat.TYPE_JSON_OBJECT: "json_object",
    infer_pb2.ResponseFormat.TYPE_JSON_SCHEMA: "json_schema",
}


MAX_JSON_BYTES = 256 * 1024
"""The longest JSON text one field may carry (a tool's schema, a response schema, tool-call arguments)."""
MAX_JSON_DEPTH = 64
"""The deepest nesting of objects and arrays such a JSON text may have."""
MAX_SCHEMA_CHARS = 1024 * 1024
"""All the JSON schemas of one request together (tools and response format), in characters."""
MAX_TOOLS = 128


class _NotFinite(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _refuse_constant(literal: str) -> float:
    raise _NotFinite(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NotFinite(literal)
    return value


def parse_json(text: str, field: str, what: str) -> Any:
    """Parse caller-supplied JSON text within the size and depth bounds, finite numbers only;
    ``InvalidRequest`` naming ``field`` and the rule otherwise."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate in the text itself, not escaped
        raise _lone_surrogate(field, what) from None
    if size > MAX_JSON_BYTES:
        raise InvalidRequest(field, f"{what} is {size} bytes, more than the limit of {MAX_JSON_BYTES}")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(field, f"{what} is not valid JSON ({exc.msg} at position {exc.pos})") from exc
    except _NotFinite as exc:
        raise InvalidRequest(
            field, f"{what} contains the non-finite number {shown(exc.literal, 24)}; only finite numbers"
        ) from exc
    except RecursionError as exc:
        raise _too_deep(field, what) from exc
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise InvalidRequest(field, f"{what} is not acceptable JSON ({shown(str(exc), 80)})") from exc
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise _too_deep(field, what)
    if _SURROGATE_ESCAPE.search(text) is not None and not _encodable(value):
        raise _lone_surrogate(field, what)
    return value


def _lone_surrogate(field: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        field, f"{what} has half of a UTF-16 surrogate pair (a lone \\ud800-\\udfff); only whole characters"
    )


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""An escape of a surrogate code unit: only text that has one can decode to a lone surrogate
(a whole pair decodes to one character)."""


def _encodable(value: Any) -> bool:
    """Every string in ``value`` (keys too) encodes as UTF-8: no lone surrogate, which no
    upstream's JSON encoder takes (the adapters that send arguments as an object raised on
    them, a 500)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _too_deep(field: str, what: str) -> InvalidRequest:
    return InvalidRequest(field, f"{what} is nested deeper than the limit of {MAX_JSON_DEPTH} levels")


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when objects and arrays nest more than ``limit`` levels (iterative: no recursion)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        # Only the objects and arrays among the children, picked out at C speed: one by one
        # in Python, a body's list of four million strings cost a third of a second.
        for child in compress(children, map(isinstance, children, repeat(_CONTAINERS))):
            if depth + 1 > limit:
                return True
            if child:
                stack.append((child, depth + 1))
    return False


_CONTAINERS = (dict, list)


def json_object(text: str, field: str, what: str) -> dict[str, Any]:
    value = parse_json(text, field, what)
    if not isinstance(value, dict):
        raise InvalidRequest(field, f"{what} must be a JSON object")
    return value


_DETAILS = ("", *IMAGE_DETAILS)
_DETAILS_SAID = "must be " + ", ".join(IMAGE_DETAILS[:-1]) + " or " + IMAGE_DETAILS[-1]


def image_from_url(url: str, detail: Any, field: str) -> ImagePart:
    """An image given by ``url`` (http(s), or a base64 ``data:image/...`` URL, decoded) at
    ``detail``; ``InvalidRequest`` naming ``field``'s ``url`` or ``detail`` otherwise. Both
    doors read an image URL with this, so neither sends on what a provider refuses unnamed."""
    if detail not in _DETAILS:
        raise InvalidRequest(f"{field}.detail", _DETAILS_SAID)
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        media_type = header[5:].partition(";")[0]
        if not sep or not header.endswith(";base64") or not media_type.startswith("image/"):
            raise InvalidRequest(f"{field}.url", "a data URL must be data:image/<type>;base64,<data>")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"{field}.url", "the data URL is not valid base64") from exc
        if not raw:
            # Sent on, an empty image came back as the provider's refusal, naming no field.
            raise InvalidRequest(f"{field}.url", "the data URL holds no image data")
        return ImagePart(data=raw, media_type=media_type, detail=detail)
    if not url.startswith(("https://", "http://")):
        raise InvalidRequest(f"{field}.url", "must be an http(s) URL or a base64 data URL")
    return ImagePart(url=url, detail=detail)


def _content(part: infer_pb2.ContentPart, field: str, images: bool) -> ContentPart:
    """``images``: a user message's part, which may be an image (as the HTTP door reads it: an
    image elsewhere was dropped unsent by the OpenAI-style adapters, an assistant's or a
    tool's content being sent as its text, or refused by the provider naming no field)."""
    kind = part.WhichOneof("part")
    if kind == "text":
        return TextPart(part.text)
    if kind == "image" and not images:
        raise InvalidRequest(f"{field}.image", "images are allowed in user messages only")
    if kind == "image":
        image = part.image
        source = image.WhichOneof("source")
        if source == "url" and image.url:
            if image.media_type:
                # Dropped before: a provider reads a URL's type from what it fetches (and a
                # data: URL states its own), so a type sent beside one was never used.
                raise InvalidRequest(f"{field}.image.media_type", "only for an image sent as data")
            return image_from_url(image.url, image.detail, f"{field}.image")
        if source == "data" and image.data:
            if not image.media_type.startswith("image/"):
                raise InvalidRequest(
                    f"{field}.image.media_type", "must be an image type (image/...) when the image is data"
                )
            if image.detail not in _DETAILS:
                raise InvalidRequest(f"{field}.image.detail", _DETAILS_SAID)
            return ImagePart(data=image.data, media_type=image.media_type, detail=image.detail)
        raise InvalidRequest(f"{field}.image", "needs a url or data")
    raise InvalidRequest(field, "empty content part: set text or image")


def message_from_proto(message: infer_pb2.Message, field: str) -> Message:
    role = ROLE_FROM_PROTO.get(message.role)
    if role is None:
        raise InvalidRequest(f"{field}.role", f"unknown role {message.role}")
    images = role is Role.USER
    content = tuple(_content(p, f"{field}.content[{i}]", images) for i, p in enumerate(message.content))
    calls = []
    for i, call in enumerate(message.tool_calls):
        where = f"{field}.tool_calls[{i}]"
        if not call.name:
            raise InvalidRequest(f"{where}.name", "must not be empty")
        if call.arguments_json:
            json_object(call.arguments_json, f"{where}.arguments_json", "arguments")
        calls.append(ToolCall(call.id, call.name, call.arguments_json or "{}"))
    if message.tool_call_id and role is not Role.TOOL:
        # No provider is sent it elsewhere: dropped unread, where the HTTP door refuses it.
        raise InvalidRequest(f"{field}.tool_call_id", "only tool messages answer a tool call")
    return Message(role, content, tuple(calls), message.tool_call_id, message.name)


def _schema_fields_absent(rf: infer_pb2.ResponseFormat) -> None:
    """``InvalidRequest`` naming the first of a non-JSON_SCHEMA format's schema fields that is
    set. Ignored, a schema the caller meant the answer to keep to was not kept to (its type
    left unspecified, read as TEXT), where the HTTP door refuses a json_schema of another type."""
    for name, value in (
        ("json_schema", rf.json_schema),
        ("schema_name", rf.schema_name),
        ("strict", rf.strict),
        ("description", rf.description),
    ):
        if value:
            raise InvalidRequest(f"response_format.{name}", "only allowed when type is JSON_SCHEMA")


def chat_request_from_proto(request: infer_pb2.InferRequest) -> ChatRequest:
    """Convert (and parse the JSON inside) an ``InferRequest``."""
    # Counts first, before a message is converted (each is Python work on the event loop).
    count = len(request.messages)
    check_counts(count, ((len(m.content), len(m.tool_calls)) for m in request.messages[:MAX_MESSAGES]))
    if len(request.tools) > MAX_TOOLS:
        raise InvalidRequest("tools", f"{len(request.tools)} tools, more than the limit of {MAX_TOOLS}")
    check_stop_count(len(request.params.stop), "params.stop")
    messages = tuple(message_from_proto(m, f"messages[{i}]") for i, m in enumerate(request.messages))
    schema_bytes = len(request.response_format.json_schema) + sum(
        len(t.parameters_json_schema) for t in request.tools
    )
    if schema_bytes > MAX_SCHEMA_CHARS:
        raise InvalidRequest(
            "tools",
            f"the request's JSON schemas (tools and response_format) are {schema_bytes} characters"
            f" in all, more than the limit of {MAX_SCHEMA_CHARS}",
        )
    tools = []
    for i, tool in enumerate(request.tools):
        where = f"tools[{i}]"
        if not tool.name:
            raise InvalidRequest(f"{where}.name", "must not be empty")
        parameters = (
            json_object(tool.parameters_json_schema, f"{where}.parameters_json_schema", "JSON schema")
            if tool.parameters_json_schema
            else {"type": "object", "properties": {}}
        )
        tools.append(ToolDefinition(tool.name, tool.description, parameters, tool.strict))
    tool_choice = None
    if request.HasField("tool_choice"):
        mode = _TOOL_CHOICE.get(request.tool_choice.mode)
        if mode is None:
            raise InvalidRequest("tool_choice.mode", f"unknown mode {request.tool_choice.mode}")
        if mode != "tool" and request.tool_choice.tool_name:
            # Ignored, the tool the caller meant the model to call was left to its choice (the
            # mode left unspecified, read as AUTO); the HTTP door names a tool only as a choice.
            raise InvalidRequest("tool_choice.tool_name", "only allowed when mode is TOOL")
        tool_choice = ToolChoice(mode, request.tool_choice.tool_name)  # type: ignore[arg-type]
    response_format = None
    if request.HasField("response_format"):
        rf = request.response_format
        kind = _FORMAT.get(rf.type)
        if kind is None:
            raise InvalidRequest("response_format.type", f"unknown type {rf.type}")
        schema = None
        if kind == "json_schema":
            if not rf.json_schema:
                raise InvalidRequest("response_format.json_schema", "required when type is JSON_SCHEMA")
            schema = json_object(rf.json_schema, "response_format.json_schema", "JSON schema")
        else:
            _schema_fields_absent(rf)
        # The description as the HTTP door carries it: sent where the wire has a place for it,
        # read by input rules. Without this field, a gRPC caller's guidance could not be sent.
        response_format = ResponseFormat(kind, rf.schema_name, schema, rf.strict, rf.description)  # type: ignore[arg-type]
    p = request.params
    params = GenerationParams(
        max_output_tokens=p.max_output_tokens if p.HasField("max_output_tokens") else None,
        temperature=p.temperature if p.HasField("temperature") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        stop=tuple(p.stop),
        seed=p.seed if p.HasField("seed") else None,
        presence_penalty=p.presence_penalty if p.HasField("presence_penalty") else None,
        frequency_penalty=p.frequency_penalty if p.HasField("frequency_penalty") else None,
        parallel_tool_calls=p.parallel_tool_calls if p.HasField("parallel_tool_calls") else None,
    )
    return ChatRequest(messages, tuple(tools), tool_choice, params, response_format)


def embed_request_from_proto(request: infer_pb2.EmbedRequest) -> EmbedRequest:
    if len(request.inputs) > MAX_EMBED_INPUTS:
        raise InvalidRequest("inputs", f"at most {MAX_EMBED_INPUTS} inputs per request")
    return EmbedRequest(tuple(request.inputs), request.dimensions if request.HasField("dimensions") else None)


MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_metadata(metadata: Mapping[str, Any]) -> None:
    """A request's routing ``metadata`` within its limits, every value a string; both doors'."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequest("metadata", f"at most {MAX_METADATA_PAIRS} pairs")
    for key, item in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequest("metadata", f"keys are at most {MAX_METADATA_KEY} characters")
        field = f"metadata.{shown(key, 64)}"
        if type(item) is not str:
            raise InvalidRequest(field, "must be a string")
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidRequest(field, f"at most {MAX_METADATA_VALUE} characters")


def hints_from_proto(request: infer_pb2.InferRequest | infer_pb2.EmbedRequest) -> Hints:
    """What the request says to routing besides its content."""
    required = getattr(request, "required_capabilities", ())
    capabilities = set()
    for i, value in enumerate(required):
        capability = CAPABILITY_FROM_PROTO.get(value)
        if capability is None:
            # Dropping it would route to a model that may lack what the caller requires.
            raise InvalidRequest(f"required_capabilities[{i}]", f"unknown capability {value}")
        capabilities.add(capability)
    # Limited as the HTTP door limits it: unlimited, a gRPC caller's hundreds of thousands
    # of pairs were carried through routing, which the HTTP door refuses past 16.
    check_metadata(request.metadata)
    classification = request.data_classification
    if classification not in DataClass._value2member_map_:
        # Reading it as UNSPECIFIED would route data the caller classified (as something this
        # node does not know, e.g. a class added to the API later) as if unclassified.
        raise InvalidRequest("data_classification", f"unknown data classification {classification}")
    return Hints(
        # "auto" is the policy's choice here too, as it is through the HTTP door (where it is
        # how a caller says so): through gRPC it was looked up as an alias, and refused.
        model="" if request.model == AUTO_MODEL else request.model,
        # Compared without surrounding whitespace, as the HTTP door's x-signalbox-task (a
        # header's value is trimmed): kept as sent, " summarize " matched a policy's task
        # through one door and fell to the default route through the other.
        task=request.task.strip(),
        data_classification=DataClass(classification),
        metadata=request.metadata,
        capabilities=frozenset(capabilities),
    )


def decode_chat(request: infer_pb2.InferRequest) -> tuple[ChatRequest, Hints]:
    return chat_request_from_proto(request), hints_from_proto(request)


def decode_embed(request: infer_pb2.EmbedRequest) -> tuple[EmbedRequest, Hints]:
    return embed_request_from_proto(request), hints_from_proto(request)


# ---- outbound ----


def message_to_proto(message: Message) -> infer_pb2.Message:
    out = infer_pb2.Message(
        role=ROLE_TO_PROTO[message.role], tool_call_id=message.tool_call_id, name=message.name
    )
    for part in message.content:
        if isinstance(part, TextPart):
            out.content.add(text=part.text)
        else:
            image = infer_pb2.ImagePart(media_type=part.media_type, detail=part.detail)
            if part.url is not None:
                image.url = part.url
            elif part.data is not None:
                image.data = part.data
            out.content.add(image=image)
    for call in message.tool_calls:
        out.tool_calls.add(id=call.id, name=call.name, arguments_json=call.arguments)
    return out


def usage_to_proto(usage: Usage | None) -> common_pb2.Usage:
    if usage is None:
        return common_pb2.Usage()
    return common_pb2.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_input_tokens=usage.cache_write_input_tokens,
        total_tokens=usage.total_tokens,
        reasoning_output_tokens=usage.reasoning_output_tokens,
    )


def cost_to_proto(cost: Cost) -> common_pb2.Cost:
    return common_pb2.Cost(
        currency="USD",
        input_nanos=cost.input_nanos,
        output_nanos=cost.output_nanos,
        total_nanos=cost.total_nanos,
    )


def provider_name(candidate: Candidate) -> str:
    return candidate.provider.name or candidate.provider.id


def answer_to_proto(served: Served[ChatResponse]) -> infer_pb2.InferResponse:
    result, candidate = served.result, served.candidate
    return infer_pb2.InferResponse(
        message=message_to_proto(result.message),
        finish_reason=FINISH_TO_PROTO[result.finish_reason],
        usage=usage_to_proto(result.usage),
        cost=cost_to_proto(served.cost),
        model=candidate.model.alias,
        provider=provider_name(candidate),
        routing=routing_to_proto(served.plan, candidate, served.attempts),
        correlation_id=served.correlation_id,
        evidence_id=served.evidence_id,
        snapshot_version=served.snapshot_version,
    )


def embedding_to_proto(served: Served[EmbedResponse]) -> infer_pb2.EmbedResponse:
    candidate = served.candidate
    response = infer_pb2.EmbedResponse(
        usage=usage_to_proto(served.result.usage),
        cost=cost_to_proto(served.cost),
        model=candidate.model.alias,
        provider=provider_name(candidate),
        routing=routing_to_proto(served.plan, candidate, served.attempts),
        correlation_id=served.correlation_id,
        evidence_id=served.evidence_id,
        snapshot_version=served.snapshot_version,
    )
    for i, vector in enumerate(served.result.vectors):
        response.embeddings.add(index=i, values=vector)
    return response


def stream_event_to_proto(event: StreamEvent) -> infer_pb2.InferStreamEvent:
    if isinstance(event, StreamChunk):
        return delta_to_proto(event)
    if isinstance(event, Opened):
        return infer_pb2.InferStreamEvent(
            start=infer_pb2.StreamStart(
                correlation_id=event.correlation_id,
                model=event.candidate.model.alias,
                provider=provider_name(event.candidate),
            )
        )
    return infer_pb2.InferStreamEvent(
        end=infer_pb2.StreamEnd(
            finish_reason=FINISH_TO_PROTO[event.finish_reason],
            usage=usage_to_proto(event.usage),
            cost=cost_to_proto(event.cost),
            routing=routing_to_proto(event.plan, event.candidate, event.attempts),
            snapshot_version=event.snapshot_version,
            evidence_id=event.evidence_id,
        )
    )


def routing_to_proto(
    plan: RoutePlan, candidate: Candidate | None, attempts: list[AttemptRecord]
) -> infer_pb2.RoutingDecision:
    """The routing summary callers receive."""
    decision = infer_pb2.RoutingDecision(
        policy_id=plan.policy_id,
        policy_version=plan.policy_version,
        rule=plan.rule,
        strategy=plan.strategy,
        candidates=plan.considered,
        reason=plan.reason,
    )
    for model, reason in plan.dropped:
        decision.dropped.add(model=model, reason=reason)
    if candidate is not None:
        decision.chosen_model = candidate.model.alias
        decision.chosen_provider = provider_name(candidate)
        decision.chosen_deployment = candidate.deployment.id
    for a in attempts:
        decision.attempts.add(
            model=a.candidate.model.alias,
            provider=provider_name(a.candidate),
            deployment=a.candidate.deployment.id,
            outcome=a.outcome,
            error=a.error,
            duration_ms=a.duration_ms,
        )
    return decision


def delta_to_proto(chunk: StreamChunk) -> infer_pb2.InferStreamEvent:
    delta = infer_pb2.StreamDelta(text=chunk.text)
    for call in chunk.tool_calls:
        delta.tool_calls.append(_tool_delta(call))
    return infer_pb2.InferStreamEvent(delta=delta)


def deltas_to_proto(chunks: Sequence[StreamChunk]) -> infer_pb2.InferStreamEvent:
    """Consecutive chunks as one delta (``dataplane.api.relay``): their text joined, their
    tool-call fragments in order, a fragment that continues the call before it (same index,
    no id or name of its own) joined to it."""
    if len(chunks) == 1:
        return delta_to_proto(chunks[0])
    delta = infer_pb2.StreamDelta(text="".join(chunk.text for chunk in chunks))
    last: infer_pb2.ToolCallDelta | None = None
    for chunk in chunks:
        for call in chunk.tool_calls:
            if last is not None and last.index == call.index and not call.id and not call.name:
                last.arguments_fragment += call.arguments_fragment
            else:
                last = delta.tool_calls.add(
                    index=call.index, id=call.id, name=call.name, arguments_fragment=call.arguments_fragment
                )
    return infer_pb2.InferStreamEvent(delta=delta)


def _tool_delta(call: ToolCallDelta) -> infer_pb2.ToolCallDelta:
    return infer_pb2.ToolCallDelta(
        index=call.index, id=call.id, name=call.name, arguments_fragment=call.arguments_fragment
    )
