"""The normalized, provider-neutral shape of chat and embedding calls.

The Infer API converts to these types at its edge (``dataplane.edge.infer``);
every provider adapter translates between these and its own wire format.
No value is changed once made (``dataclasses.replace`` makes a new one). Those made for every
request (a message and its text, the request, the answer, its usage) and
every chunk are not frozen, only slotted: a frozen dataclass sets each field through
``object.__setattr__``, several times the cost of a plain assignment; none of them is hashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Role(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(slots=True)  # not frozen: made per request (module docstring)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image given either by URL or by raw bytes (then ``media_type`` is set)."""

    url: str | None = None
    data: bytes | None = None
    media_type: str = ""
    detail: str = ""


ContentPart = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments object as JSON text (OpenAI convention)."""


@dataclass(slots=True)  # not frozen: made per request (module docstring)
class Message:
    role: Role
    content: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    """For ``Role.TOOL``: the id of the call this message answers."""
    name: str = ""

    @property
    def text(self) -> str:
        """All text parts joined, images skipped."""
        content = self.content
        if len(content) == 1 and type(content[0]) is TextPart:
            return content[0].text  # nearly every message: read several times per request
        return "".join(p.text for p in content if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    """JSON Schema of the arguments object."""
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str = ""
    """The tool that must be called when ``mode == "tool"``."""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = ""
    schema: dict[str, Any] | None = None
    strict: bool = False
    description: str = ""
    """What the schema's answer is for, guidance for the model (OpenAI's
    ``json_schema.description``): sent where the provider's wire format has a place for it."""


@dataclass(frozen=True, slots=True)  # frozen: the default ``ChatRequest.params`` is shared
class GenerationParams:
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    parallel_tool_calls: bool | None = None


@dataclass(slots=True)  # not frozen: made per request (module docstring)
class ChatRequest:
    """What an adapter sends, minus the model name (given per call)."""

    messages: tuple[Message, ...]
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice | None = None
    params: GenerationParams = GenerationParams()
    response_format: ResponseFormat | None = None


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


@dataclass(slots=True)  # not frozen: made per request (module docstring)
class Usage:
    """Token counts, OpenAI convention: cached and cache-write tokens are part of input."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    """The part of ``output_tokens`` the model spent reasoning, where its provider reports it
    (OpenAI's ``reasoning_tokens``, Gemini's ``thoughtsTokenCount``); 0 where it reports none
    (Anthropic counts thinking in its output tokens without saying how much)."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)  # not frozen: made per request (module docstring)
class ChatResponse:
    message: Message
    """The assistant's message: text parts and tool calls."""
    finish_reason: FinishReason
    usage: Usage | None = None
    upstream_model: str = ""
    upstream_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    """Position among the response's tool calls (0, 1, ...), never a provider block index."""
    id: str = ""
    name: str = ""
    arguments_fragment: str = ""


@dataclass(slots=True)  # not frozen: made per chunk (see dataplane.pipeline.call); never changed
class StreamChunk:
    """One normalized streaming event. Any field may be empty.

    ``usage`` is cumulative: the last one seen is the total (the node counts the highest of
    each field seen, should a later report contradict an earlier one).
    ``finish_reason`` is set once, when the provider says why it stopped.
    """

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    inputs: tuple[str, ...]
    dimensions: int | None = None


@dataclass(frozen=True, slots=True)
class EmbedResponse:
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage | None = None
    upstream_model: str = ""
