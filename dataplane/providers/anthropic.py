"""Anthropic's Messages API (``POST {base_url}/v1/messages``).

``base_url`` defaults to ``https://api.anthropic.com``. The credential goes in
``x-api-key`` with the required ``anthropic-version`` header.

Settings:

- ``anthropic_version`` (``"2023-06-01"``)
- ``default_max_tokens`` (``"4096"``): Anthropic requires ``max_tokens``; this
  is sent when the request sets no limit.

Translation policies (the API cannot express everything OpenAI's can):

- All system and developer messages are joined with ``\\n`` into the top-level
  ``system`` field, wherever they stood.
- Tool results become ``tool_result`` blocks in a user turn; consecutive
  results (and a user message right after them) share one turn, results first.
- ``temperature`` above 1 is capped to 1 (Anthropic's range is 0-1).
- ``seed``, penalties and ``response_format`` (its schema's ``description``
  with it) have no Anthropic equivalent and are not sent; routing is where
  JSON-mode capability is checked.
- ``stop_reason`` ``pause_turn`` (a long server-tool turn paused by Anthropic)
  maps to ``length``: the answer is incomplete, like one cut by the token
  limit, and the caller continues it by sending it back as the assistant turn.
  ``stop`` would pass half an answer off as a whole one; an error would throw
  away tokens already paid for.
- ``tool_use`` input that is not a JSON object is malformed output
  (``UpstreamProtocolError``), see ``wire.arguments_text``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, ClassVar

from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    Role,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolChoice,
    Usage,
)
from dataplane.config.model import ProviderConfig
from dataplane.upstream import UpstreamClient

from .classify import ErrorFacts, text_of, tokens_of
from .transport import HttpAdapter, SSEStreamDecoder
from .wire import (
    ToolCallIndexer,
    answer_label,
    answer_text,
    arguments_object,
    arguments_text,
    assistant_response,
    conversation,
    image_base64,
    settle_finish,
    synthesize_call_id,
    system_prompt,
    token_count,
    tool_name,
)

MAX_BLOCK_INDEX = 1 << 31
"""Above any content block index an answer reaches (its blocks are bounded by its tokens); what a
decoder holds per block is bounded by the tool calls an answer may start (``ToolCallIndexer``)."""

STOP_REASONS: Mapping[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.LENGTH,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096


class AnthropicAdapter(HttpAdapter):
    """Messages API, plain and streamed (named SSE events ending with ``message_stop``)."""

    type_name: ClassVar[str] = "anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"

    def __init__(self, config: ProviderConfig, client: UpstreamClient, credential: str | None) -> None:
        super().__init__(config, client, credential)
        # Checked here, when the snapshot is applied, not on the first request.
        raw = config.settings.get("default_max_tokens", str(DEFAULT_MAX_TOKENS))
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"setting default_max_tokens must be a positive integer, not {raw!r}")
        self.default_max_tokens = int(raw)

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.config.settings.get("anthropic_version", DEFAULT_VERSION)}
        if self._credential:
            headers["x-api-key"] = self._credential
        return headers

    async def complete(self, model: str, request: ChatRequest, *, timeout: float) -> ChatResponse:
        """One Messages call."""
        body = self.request_body(model, request)
        return await self.post_parsed(self._url, body, self.parse_message, timeout=timeout)

    def parse_message(self, payload: Any) -> ChatResponse:
        """A Messages response: text and ``tool_use`` blocks (thinking and others skipped)."""
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in payload["content"]:
            if block["type"] == "text":
                texts.append(answer_text(block.get("text")))
            elif block["type"] == "tool_use":
                calls.append(
                    ToolCall(
                        id=answer_label(block.get("id")) or synthesize_call_id(),
                        name=tool_name(self.type_name, block.get("name")),
                        arguments=arguments_text(self.type_name, block.get("input")),
                    )
                )
        return assistant_response(
            "".join(texts),
            calls,
            STOP_REASONS.get(str(payload.get("stop_reason"))),
            usage=anthropic_usage(payload.get("usage") or {}),
            upstream_model=payload.get("model"),
            upstream_id=payload.get("id"),
            provider=self.type_name,
        )

    def stream(self, model: str, request: ChatRequest, *, timeout: float) -> AsyncIterator[StreamChunk]:
        """Streamed Messages call."""
        return self.stream_chunks(
            self._url,
            lambda: {**self.request_body(model, request), "stream": True},
            AnthropicStreamDecoder(self),
            timeout=timeout,
        )

    def error_facts(self, payload: Any) -> ErrorFacts | None:
        """``{"type": "error", "error": {"type", "message"}}``, as a body or a stream event."""
        if not isinstance(payload, dict) or payload.get("type") != "error":
            return None
        # Each value read only in the type it is documented in: ``str()`` of a message nested a
        # thousand levels deep raised RecursionError, ``.get`` on an error that is text, AttributeError.
        error = payload.get("error")
        if not isinstance(error, dict):
            return ErrorFacts()
        return ErrorFacts(tokens=tokens_of(error.get("type")), message=text_of(error.get("message")))

    @property
    def _url(self) -> str:
        return f"{self.base_url}/v1/messages"

    # -- request -------------------------------------------------------------------------------

    def request_body(self, model: str, request: ChatRequest) -> dict[str, Any]:
        params = request.params
        max_tokens = params.max_output_tokens or self.default_max_tokens
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": self._messages(conversation(request.messages)),
        }
        if system := system_prompt(request.messages):
            body["system"] = system
        if params.temperature is not None:
            body["temperature"] = min(params.temperature, 1.0)
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        if request.tools:
            body["tools"] = [
                {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "input_schema": t.parameters or {"type": "object", "properties": {}},
                }
                for t in request.tools
            ]
        choice = self._tool_choice(request.tool_choice, params.parallel_tool_calls)
        if choice is not None and request.tools:
            body["tool_choice"] = choice
        return body

    @staticmethod
    def _tool_choice(choice: ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
        mode = choice.mode if choice is not None else "auto"
        if mode == "none":
            return {"type": "none"}
        out: dict[str, Any]
        if mode == "tool":
            out = {"type": "tool", "name": choice.name if choice is not None else ""}
        elif mode == "required":
            out = {"type": "any"}
        else:
            out = {"type": "auto"}
        # Anthropic puts the one-call-at-most switch inside tool_choice.
        if parallel is False:
            out["disable_parallel_tool_use"] = True
        elif choice is None:
            return None
        return out

    def _messages(self, messages: Iterable[Message]) -> list[dict[str, Any]]:
        turns: list[dict[str, Any]] = []
        for message in messages:
            role = "assistant" if message.role is Role.ASSISTANT else "user"
            blocks = self._blocks(message)
            if not blocks:
                continue
            if turns and turns[-1]["role"] == role:
                merged = turns[-1]["content"] + blocks
                # tool_result blocks must open the user turn; text before them is a 400.
                turns[-1]["content"] = [b for b in merged if b["type"] == "tool_result"] + [
                    b for b in merged if b["type"] != "tool_result"
                ]
            else:
                turns.append({"role": role, "content": blocks})
        return turns

    def _blocks(self, message: Message) -> list[dict[str, Any]]:
        if message.role is Role.TOOL:
            return [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text}]
        blocks: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                if part.text:  # Anthropic rejects empty text blocks
                    blocks.append({"type": "text", "text": part.text})
            else:
                blocks.append(self._image(part))
        for call in message.tool_calls:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": arguments_object(self.type_name, call),
                }
            )
        return blocks

    @staticmethod
    def _image(part: ImagePart) -> dict[str, Any]:
        inline = image_base64(part)
        if inline is not None:
            return {"type": "image", "source": {"type": "base64", "media_type": inline[0], "data": inline[1]}}
        return {"type": "image", "source": {"type": "url", "url": part.url}}


def anthropic_usage(usage: Mapping[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; ours includes them."""
    cache_read = token_count(usage.get("cache_read_input_tokens"))
    cache_write = token_count(usage.get("cache_creation_input_tokens"))
    return Usage(
        input_tokens=token_count(usage.get("input_tokens")) + cache_read + cache_write,
        output_tokens=token_count(usage.get("output_tokens")),
        cached_input_tokens=cache_read,
        cache_write_input_tokens=cache_write,
    )


USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
"""The counts of a usage object ``anthropic_usage`` reads; a stream keeps only these."""


def usage_counts(usage: object) -> dict[str, int]:
    """A stream event's usage object as the counts it holds (checked as ``token_count`` checks
    them); none or null: none. Kept whole and merged event after event, every other key of
    every event was held: 240 MB of distinct keys sent held 1.36 GB. Not an object: TypeError
    (malformed output, as a unary answer's usage is)."""
    if not usage:
        return {}
    if not isinstance(usage, dict):
        raise TypeError("usage is not an object")
    return {field: token_count(usage[field]) for field in USAGE_FIELDS if field in usage}


class AnthropicStreamDecoder(SSEStreamDecoder):
    """Named events: message_start, content_block_start/delta/stop, message_delta, message_stop.

    ``ping`` and event types we do not know are skipped, as Anthropic asks.
    Tool blocks get tool-call indexes counting only tool blocks (the
    Anthropic block index counts text blocks too). Usage starts in
    ``message_start``; ``message_delta`` usage is cumulative and replaces it.
    """

    missing_terminator: ClassVar[str] = "message_stop"

    def __init__(self, adapter: AnthropicAdapter) -> None:
        super().__init__(adapter)
        self._tools = ToolCallIndexer(adapter.type_name)
        self._arguments: dict[int, list[str]] = {}
        """The ``partial_json`` fragments of each open tool block, keyed by Anthropic block
        index (kept apart and joined once: adding each to a string copied all before it)."""
        self._usage: dict[str, int] = {}
        self._started = False
        """Whether ``message_start`` came: ``message_stop`` before it is no answer."""

    def on_event(self, payload: dict[str, Any] | None) -> list[StreamChunk]:
        if payload is None:
            raise self.adapter.malformed("unexpected [DONE] in an Anthropic stream")
        kind = payload.get("type")
        if kind == "message_start":
            self._started = True
            self._usage.update(usage_counts((payload.get("message") or {}).get("usage")))
        elif kind == "content_block_start":
            return self._block_start(self._index(payload), payload.get("content_block") or {})
        elif kind == "content_block_delta":
            return self._block_delta(self._index(payload), payload.get("delta") or {})
        elif kind == "content_block_stop":
            return self._block_stop(self._index(payload))
        elif kind == "message_delta":
            self._usage.update(usage_counts(payload.get("usage")))
            stop_reason = (payload.get("delta") or {}).get("stop_reason")
            reason, closed = None, []
            if stop_reason is not None:
                closed = self._close_open_blocks()  # checked before the finish goes out
                reason = settle_finish(STOP_REASONS.get(str(stop_reason)), self._tools.count > 0)
            return [*closed, StreamChunk(finish_reason=reason, usage=anthropic_usage(self._usage))]
        elif kind == "message_stop":
            if not self._started:
                raise self.adapter.malformed("stream ended without message_start")
            self.done = True
            return self._close_open_blocks()
        return []

    def _index(self, payload: dict[str, Any]) -> int:
        """A content block's ``index``: a whole number (missing or null: 0) below
        ``MAX_BLOCK_INDEX``. ``int()`` took ``"3"``, ``2.9`` and ``true`` as indexes; Anthropic
        sends integers, and anything else is malformed output, as OpenAI's tool-call index is."""
        value = payload.get("index")
        if value is None:
            return 0
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_BLOCK_INDEX:
            raise self.adapter.malformed("a content block's index is not a whole number in range")
        return value

    def _close_open_blocks(self) -> list[StreamChunk]:
        """Every tool block the upstream never stopped, stopped (its arguments checked) now: a
        stream that ends without ``content_block_stop`` must not hand the caller unchecked ones."""
        return [chunk for index in list(self._arguments) for chunk in self._block_stop(index)]

    def _block_start(self, index: int, block: dict[str, Any]) -> list[StreamChunk]:
        if block.get("type") == "tool_use":
            # A block restarted at an index still open ends the one there first, checked.
            closed = self._block_stop(index)
            self._arguments[index] = []
            name = tool_name(self.adapter.type_name, block.get("name"))
            delta = self._tools.start(index, answer_label(block.get("id")), name)
            return [*closed, StreamChunk(tool_calls=(delta,))]
        if block.get("type") == "text" and (text := answer_text(block.get("text"))):
            return [StreamChunk(text=text)]
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[StreamChunk]:
        kind = delta.get("type")
        if kind == "text_delta" and (text := answer_text(delta.get("text"))):
            return [StreamChunk(text=text)]
        if kind == "input_json_delta" and index in self._arguments:
            fragment = answer_text(delta.get("partial_json"))
            self._arguments[index].append(fragment)
            more = self._tools.fragment(index, fragment)
            return [StreamChunk(tool_calls=(more,))] if more is not None else []
        return []

    def _block_stop(self, index: int) -> list[StreamChunk]:
        fragments = self._arguments.pop(index, None)
        if fragments is None:
            return []
        arguments = "".join(fragments)
        if not arguments.strip():
            # A tool without parameters streams no JSON at all; "{}" keeps the
            # assembled arguments valid and equal to the non-streamed answer.
            more = self._tools.fragment(index, "{}")
            return [StreamChunk(tool_calls=(more,))] if more is not None else []
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            # The arguments (model output) are not kept: see ``wire.arguments_text``.
            raise self.adapter.malformed("tool call arguments are not a JSON object")
        return []
