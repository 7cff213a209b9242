"""The OpenAI chat-completions wire format, shared by OpenAI, Azure, Mistral and compatible servers.

They differ in small, named ways collected in ``OpenAIDialect`` (which field
carries the token limit and the seed, whether ``stream_options`` exists, how
"must call a tool" is spelled) and in two hooks (URL and tool-call id
rewriting); everything else is this module.

Answers a provider got wrong, or that are not answers:

- A ``refusal`` (``message.refusal``, streamed as ``delta.refusal``) is the
  answer's text, with finish ``content_filter`` (OpenAI itself says ``stop``):
  the caller sees that the model declined and its words, not an empty answer.
- Tool-call ``arguments`` that are not a JSON object (checked whole: at the
  answer, or for a stream when its finish reason or ``[DONE]`` arrives) are an
  ``UpstreamProtocolError``, see ``wire.arguments_text``; a stream has by then
  sent the fragments, and ends with that error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
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

from .classify import ErrorFacts, classify_error, text_of, tokens_of
from .transport import HttpAdapter, SSEStreamDecoder
from .wire import (
    ToolCallIndexer,
    answer_label,
    answer_text,
    arguments_text,
    assistant_response,
    call_index,
    check_arguments,
    fragment_text,
    image_url,
    settle_finish,
    synthesize_call_id,
    token_count,
    tool_name,
)

FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "eos_token": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "model_length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}

_NO_IDS: Mapping[str, str] = {}


def _original_id(ids: Mapping[str, str], call_id: str) -> str:
    return ids.get(call_id, call_id)


@dataclass(frozen=True, slots=True)
class OpenAIDialect:
    """The ways one OpenAI-shaped API differs from OpenAI's own."""

    max_tokens_field: str = "max_completion_tokens"
    """OpenAI deprecated ``max_tokens``; Mistral and most compatible servers only know it."""
    seed_field: str = "seed"
    stream_usage: bool = True
    """Send ``stream_options.include_usage``; Mistral has no ``stream_options`` and rejects it."""
    developer_role: bool = True
    """Whether ``developer`` messages may be sent as such; otherwise they become ``system``."""
    required_tool_choice: str = "required"
    explicit_auto_tool_choice: bool = True
    """Whether ``tool_choice: "auto"`` may be sent; vLLM rejects it unless started with
    ``--enable-auto-tool-choice``, and auto is the default wherever tools are given."""
    dimensions_field: str = "dimensions"


class OpenAIFamilyAdapter(HttpAdapter):
    """Chat completions and embeddings over the OpenAI wire format."""

    dialect: ClassVar[OpenAIDialect] = OpenAIDialect()

    # -- hooks ---------------------------------------------------------------------------------

    def chat_url(self, model: str) -> str:
        return f"{self.base_url}/chat/completions"

    def embeddings_url(self, model: str) -> str:
        return f"{self.base_url}/embeddings"

    def query(self) -> dict[str, str] | None:
        """Query parameters for every call (Azure's ``api-version``)."""
        return None

    def model_field(self, model: str) -> str | None:
        """The ``model`` body field; None to leave it out (Azure names the deployment in the URL)."""
        return model

    def id_to_upstream(self, call_id: str) -> str:
        """Rewrite a tool-call id on the way out (Mistral accepts only its own id shape)."""
        return call_id

    def ids_from_upstream(self, request: ChatRequest) -> Mapping[str, str]:
        """Undo ``id_to_upstream`` for ids coming back: rewritten id → the caller's own, for the
        ids of this request only. Never shared between requests: an id another caller sent is
        not this caller's to see, whatever an upstream echoes."""
        return _NO_IDS

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._credential}"} if self._credential else {}

    # -- the protocol --------------------------------------------------------------------------

    async def complete(self, model: str, request: ChatRequest, *, timeout: float) -> ChatResponse:
        """One non-streamed chat completion."""
        body = self.chat_body(model, request, stream=False)
        ids = self.ids_from_upstream(request)
        return await self.post_parsed(
            self.chat_url(model),
            body,
            lambda payload: self.parse_completion(payload, ids),
            timeout=timeout,
            params=self.query(),
        )

    def stream(self, model: str, request: ChatRequest, *, timeout: float) -> AsyncIterator[StreamChunk]:
        """Streamed chat completion: data-only SSE ending with ``data: [DONE]``."""
        return self.stream_chunks(
            self.chat_url(model),
            lambda: self.chat_body(model, request, stream=True),
            OpenAIStreamDecoder(self, self.ids_from_upstream(request)),
            timeout=timeout,
            params=self.query(),
        )

    async def embed(self, model: str, request: EmbedRequest, *, timeout: float) -> EmbedResponse:
        """Embeddings as floats (never base64: nothing here needs the smaller encoding)."""
        body: dict[str, Any] = {"input": list(request.inputs), "encoding_format": "float"}
        if (name := self.model_field(model)) is not None:
            body["model"] = name
        if request.dimensions is not None:
            body[self.dialect.dimensions_field] = request.dimensions

        def parse(payload: Any) -> EmbedResponse:
            rows = sorted(payload["data"], key=lambda row: row.get("index", 0))
            usage = payload.get("usage") or {}
            return EmbedResponse(
                vectors=self.vectors((row["embedding"] for row in rows), len(request.inputs)),
                usage=Usage(input_tokens=token_count(usage.get("prompt_tokens"))) if usage else None,
                upstream_model=answer_label(payload.get("model")),
            )

        url = self.embeddings_url(model)
        return await self.post_parsed(url, body, parse, timeout=timeout, params=self.query())

    # -- request -------------------------------------------------------------------------------

    def chat_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The request body; unset parameters are left out so provider defaults apply."""
        body: dict[str, Any] = {"messages": [self._message(m) for m in request.messages]}
        if (name := self.model_field(model)) is not None:
            body["model"] = name
        params = request.params
        optional: dict[str, object] = {
            self.dialect.max_tokens_field: params.max_output_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            self.dialect.seed_field: params.seed,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        **({"description": t.description} if t.description else {}),
                        "parameters": t.parameters or {"type": "object", "properties": {}},
                        **({"strict": True} if t.strict else {}),
                    },
                }
                for t in request.tools
            ]
            if params.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = params.parallel_tool_calls
        choice = request.tool_choice
        if choice is not None and (choice.mode != "auto" or self.dialect.explicit_auto_tool_choice):
            body["tool_choice"] = self._tool_choice(choice)
        if request.response_format is not None and request.response_format.type != "text":
            fmt = request.response_format
            if fmt.type == "json_object":
                body["response_format"] = {"type": "json_object"}
            else:
                schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
                if fmt.description:
                    # Checked and then dropped, the model never saw the caller's guidance.
                    schema["description"] = fmt.description
                if fmt.strict:
                    schema["strict"] = True
                body["response_format"] = {"type": "json_schema", "json_schema": schema}
        if stream:
            body["stream"] = True
            if self.dialect.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def _tool_choice(self, choice: ToolChoice) -> object:
        if choice.mode == "tool":
            return {"type": "function", "function": {"name": choice.name}}
        if choice.mode == "required":
            return self.dialect.required_tool_choice
        return choice.mode

    def _message(self, message: Message) -> dict[str, Any]:
        role = message.role.value
        if message.role is Role.DEVELOPER and not self.dialect.developer_role:
            role = "system"
        out: dict[str, Any] = {"role": role}
        if message.role is Role.TOOL:
            out["tool_call_id"] = self.id_to_upstream(message.tool_call_id)
            out["content"] = message.text
        elif message.role is Role.ASSISTANT:
            # ``content: null`` is how OpenAI spells "only tool calls".
            out["content"] = message.text or None
            if message.tool_calls:
                out["tool_calls"] = [
                    {
                        "id": self.id_to_upstream(c.id),
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments or "{}"},
                    }
                    for c in message.tool_calls
                ]
        elif any(isinstance(p, ImagePart) for p in message.content):
            out["content"] = [self._part(p) for p in message.content]
        else:
            out["content"] = message.text
        if message.name and message.role is not Role.TOOL:
            out["name"] = message.name
        return out

    @staticmethod
    def _part(part: TextPart | ImagePart) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        image: dict[str, Any] = {"url": image_url(part)}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}

    # -- response ------------------------------------------------------------------------------

    def parse_completion(self, payload: Any, ids: Mapping[str, str] = _NO_IDS) -> ChatResponse:
        """A ``chat.completion`` object as a normalized response; ``ids`` from ``ids_from_upstream``."""
        choice = payload["choices"][0]
        message = choice["message"]
        calls = [
            ToolCall(
                id=_original_id(ids, answer_label(c.get("id"))) or synthesize_call_id(),
                name=tool_name(self.type_name, (c.get("function") or {}).get("name")),
                arguments=arguments_text(self.type_name, (c.get("function") or {}).get("arguments")),
            )
            for c in message.get("tool_calls") or ()
        ]
        text, reason = content_text(message.get("content")), self.finish_reason(choice.get("finish_reason"))
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            # The model declined: its own words are the answer, and the finish says why.
            text, reason = text or refusal, FinishReason.CONTENT_FILTER
        return assistant_response(
            text,
            calls,
            reason,
            usage=openai_usage(payload.get("usage")),
            upstream_model=payload.get("model"),
            upstream_id=payload.get("id"),
            provider=self.type_name,
        )

    def finish_reason(self, value: object) -> FinishReason | None:
        """Map ``finish_reason``; Mistral's ``error`` means generation failed upstream."""
        if value is None:
            return None
        if value == "error":
            raise classify_error(
                self.type_name,
                status=None,
                facts=ErrorFacts(tokens=("finish_reason_error",)),
                credential=self._credential,
            )
        return FINISH_REASONS.get(str(value), FinishReason.STOP)

    def error_facts(self, payload: Any) -> ErrorFacts | None:
        """OpenAI ``{"error": {...}}``, flat ``{"object": "error"}``, ``{"error": "text"}``, FastAPI 422."""
        if not isinstance(payload, dict):
            return None
        error = payload.get("error")
        if isinstance(error, dict):
            return ErrorFacts(
                tokens=tokens_of(error.get("code"), error.get("type"), error.get("status")),
                message=text_of(error.get("message")),
            )
        if isinstance(error, str):
            return ErrorFacts(tokens=tokens_of(payload.get("error_type"), payload.get("type")), message=error)
        if payload.get("object") == "error":
            return ErrorFacts(
                tokens=tokens_of(payload.get("code"), payload.get("type")),
                message=text_of(payload.get("message")),
            )
        detail = payload.get("detail")
        if isinstance(detail, str):
            return ErrorFacts(tokens=("validation_error",), message=detail)
        if isinstance(detail, list):
            # FastAPI's validation errors: their ``msg`` texts, not a repr of the whole list.
            said = (text_of(item.get("msg")) for item in detail if isinstance(item, dict))
            return ErrorFacts(tokens=("validation_error",), message="; ".join(m for m in said if m))
        return None


def content_text(content: object) -> str:
    """Message content as text: a string, or (Mistral, some servers) a list of text chunks;
    none or null: "". Content or a chunk's text of another type is malformed output
    (``wire.answer_text``)."""
    if isinstance(content, list):
        if not all(isinstance(p, dict) for p in content):
            raise TypeError("a content part is not an object")
        return "".join(answer_text(p.get("text")) for p in content if p.get("type") == "text")
    return answer_text(content)


def openai_usage(usage: object) -> Usage | None:
    """``prompt_tokens`` already includes the cached tokens, which is our convention too."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=token_count(usage.get("prompt_tokens")),
        output_tokens=token_count(usage.get("completion_tokens")),
        cached_input_tokens=token_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        reasoning_output_tokens=token_count(output_details.get("reasoning_tokens"))
        if isinstance(output_details, dict)
        else 0,
    )


class OpenAIStreamDecoder(SSEStreamDecoder):
    """``chat.completion.chunk`` events to normalized chunks.

    The usage chunk has ``choices: []``; tool calls arrive either in fragments
    under a stable ``index`` (OpenAI) or whole (Mistral, Ollama's compat
    layer), and both end up as the same deltas.
    """

    missing_terminator: ClassVar[str] = "data: [DONE]"

    def __init__(self, adapter: OpenAIFamilyAdapter, ids: Mapping[str, str] = _NO_IDS) -> None:
        super().__init__(adapter)
        self._family = adapter
        self._ids = ids
        self._tools = ToolCallIndexer(adapter.type_name)
        self._arguments: dict[int, list[str]] = {}
        """Each call's argument fragments so far, by our tool-call index: checked whole at the
        finish (kept apart and joined once: adding each to a string copied all before it)."""
        self._refused = False
        self._answered = False
        """Whether any event carried the answer's choice: ``[DONE]`` before one is no answer."""
        self._finished = False
        """Whether the choice's finish reason came: no more of the answer may follow it."""

    def on_event(self, payload: dict[str, Any] | None) -> list[StreamChunk]:
        if payload is None:  # data: [DONE]
            if not self._answered:
                # As a completion with no choices is: not an empty answer, no answer at all.
                raise self._family.malformed("stream ended without a choice")
            self._check_arguments()
            self.done = True
            return []
        chunks: list[StreamChunk] = []
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._answered = True
                chunks.extend(self._on_choice(choice))
        usage = openai_usage(payload.get("usage"))
        if usage is not None:
            chunks.append(StreamChunk(usage=usage))
        return chunks

    def _on_choice(self, choice: dict[str, Any]) -> Iterable[StreamChunk]:
        delta = choice.get("delta") or {}
        text = content_text(delta.get("content"))
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            text += refusal
            self._refused = True
        deltas = []
        for call in delta.get("tool_calls") or ():
            key = call_index(self._family.type_name, call.get("index"))
            call_id = _original_id(self._ids, answer_label(call.get("id")))
            function = call.get("function") or {}
            fragment = fragment_text(function.get("arguments"))
            if self._tools.is_new(key, call_id):
                name = tool_name(self._family.type_name, function.get("name"))
                deltas.append(self._tools.start(key, call_id, name, fragment))
            elif (more := self._tools.fragment(key, fragment)) is not None:
                deltas.append(more)
        if self._finished:
            # The answer ended at its finish (its arguments checked): only usage and [DONE] may
            # follow. A tool call after finish "stop" reached the caller unchecked, finished STOP.
            if text or deltas:
                raise self._family.malformed("answer content after its finish reason")
            return  # a finish repeated alone says nothing new
        for d in deltas:
            self._arguments.setdefault(d.index, []).append(d.arguments_fragment)
        raw_reason = choice.get("finish_reason")
        reason = self._family.finish_reason(raw_reason) if raw_reason else None
        if reason is not None:
            self._check_arguments()
            self._finished = True
            reason = (
                FinishReason.CONTENT_FILTER if self._refused else settle_finish(reason, self._tools.count > 0)
            )
        if text or deltas or reason is not None:
            yield StreamChunk(text=text, tool_calls=tuple(deltas), finish_reason=reason)

    def _check_arguments(self) -> None:
        """Each call's assembled arguments must be a JSON object (see ``wire.arguments_text``)."""
        for fragments in self._arguments.values():
            check_arguments(self._family.type_name, "".join(fragments))
        self._arguments.clear()
