"""Ollama's native chat API (``POST {base_url}/api/chat``), streamed as NDJSON.

``base_url`` defaults to ``http://localhost:11434``. Ollama ignores API keys;
a credential, if configured (say, for a proxy in front), is sent as Bearer.
For Ollama's OpenAI-compatible ``/v1`` endpoint use ``openai_compatible``.

Translation policies:

- ``stream`` defaults to true on ``/api/chat``, so it is always sent.
- Token limit, stop sequences and sampling go in ``options`` (``num_predict``, ...).
- Images must be inline (base64); an image URL is a bad request.
- Tool calls carry object arguments and often no id (one is synthesized);
  tool results are sent with ``tool_name``, looked up from the call they answer.
- ``tool_choice`` has no Ollama equivalent and is not sent.
- A ``json_schema`` response format is sent as ``format`` (the schema alone): its
  name and ``description`` have no place there and are not sent.
- ``done_reason: "stop"`` next to tool calls means ``tool_calls``.
- Embeddings use ``/api/embed`` (one call for all inputs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, ClassVar

from dataplane.chat import (
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    FinishReason,
    Message,
    Role,
    StreamChunk,
    TextPart,
    ToolCall,
    Usage,
)
from dataplane.errors import UpstreamBadRequest

from .classify import ErrorFacts
from .transport import HttpAdapter
from .wire import (
    ToolCallIndexer,
    answer_label,
    answer_text,
    arguments_object,
    arguments_text,
    assistant_response,
    image_base64,
    settle_finish,
    synthesize_call_id,
    token_count,
    tool_name,
    tool_names_by_id,
)

DONE_REASONS: Mapping[str, FinishReason] = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


class OllamaAdapter(HttpAdapter):
    """Native ``/api/chat``: richer options than the compat layer, NDJSON streaming."""

    type_name: ClassVar[str] = "ollama"
    default_base_url: ClassVar[str] = "http://localhost:11434"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._credential}"} if self._credential else {}

    @property
    def _url(self) -> str:
        return f"{self.base_url}/api/chat"

    async def complete(self, model: str, request: ChatRequest, *, timeout: float) -> ChatResponse:
        """One non-streamed chat (``stream: false``)."""
        body = self.request_body(model, request, stream=False)
        return await self.post_parsed(self._url, body, self.parse_response, timeout=timeout)

    def parse_response(self, payload: Any) -> ChatResponse:
        """The final ``/api/chat`` object."""
        message = payload["message"]
        return assistant_response(
            answer_text(message.get("content")),
            self.tool_calls(message),
            DONE_REASONS.get(str(payload.get("done_reason"))),
            usage=ollama_usage(payload),
            upstream_model=payload.get("model"),
            provider=self.type_name,
        )

    def stream(self, model: str, request: ChatRequest, *, timeout: float) -> AsyncIterator[StreamChunk]:
        """NDJSON lines; the last one has ``done: true`` and the token counts."""
        return self.stream_chunks(
            self._url,
            lambda: self.request_body(model, request, stream=True),
            OllamaStreamDecoder(self),
            timeout=timeout,
        )

    async def embed(self, model: str, request: EmbedRequest, *, timeout: float) -> EmbedResponse:
        """``/api/embed``: all inputs in one call; ``prompt_eval_count`` is the input usage."""
        body: dict[str, Any] = {"model": model, "input": list(request.inputs)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions

        def parse(payload: Any) -> EmbedResponse:
            return EmbedResponse(
                vectors=self.vectors(payload["embeddings"], len(request.inputs)),
                usage=ollama_usage(payload),
                upstream_model=answer_label(payload.get("model")),
            )

        return await self.post_parsed(f"{self.base_url}/api/embed", body, parse, timeout=timeout)

    def error_facts(self, payload: Any) -> ErrorFacts | None:
        """``{"error": "text"}``, as a body or a stream line."""
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return ErrorFacts(message=payload["error"])
        return None

    def tool_calls(self, message: Mapping[str, Any]) -> Iterable[ToolCall]:
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            yield ToolCall(
                id=answer_label(call.get("id")) or synthesize_call_id(),
                name=tool_name(self.type_name, function.get("name")),
                arguments=arguments_text(self.type_name, function.get("arguments")),
            )

    # -- request -------------------------------------------------------------------------------

    def request_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        params = request.params
        options = {
            "num_predict": params.max_output_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            "seed": params.seed,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
        }
        names = tool_names_by_id(request.messages)
        body: dict[str, Any] = {
            "model": model,
            "messages": [self._message(m, names) for m in request.messages],
            "stream": stream,
        }
        if any(v is not None for v in options.values()):
            body["options"] = {k: v for k, v in options.items() if v is not None}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters or {"type": "object", "properties": {}},
                    },
                }
                for t in request.tools
            ]
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            body["format"] = "json"
        elif fmt is not None and fmt.type == "json_schema":
            body["format"] = fmt.schema or {}
        return body

    def _message(self, message: Message, names: Mapping[str, str]) -> dict[str, Any]:
        role = "system" if message.role is Role.DEVELOPER else message.role.value
        out: dict[str, Any] = {"role": role, "content": message.text}
        images = []
        for part in message.content:
            if isinstance(part, TextPart):
                continue
            inline = image_base64(part)
            if inline is None:
                raise UpstreamBadRequest(
                    f"{self.type_name}: images must be inline (base64), not URLs", provider=self.type_name
                )
            images.append(inline[1])
        if images:
            out["images"] = images
        if message.tool_calls:
            out["tool_calls"] = [
                {"function": {"name": c.name, "arguments": arguments_object(self.type_name, c)}}
                for c in message.tool_calls
            ]
        if message.role is Role.TOOL:
            out["tool_name"] = message.name or names.get(message.tool_call_id, "")
        return out


def ollama_usage(payload: Mapping[str, Any]) -> Usage | None:
    if "prompt_eval_count" not in payload and "eval_count" not in payload:
        return None
    return Usage(
        input_tokens=token_count(payload.get("prompt_eval_count")),
        output_tokens=token_count(payload.get("eval_count")),
    )


class OllamaStreamDecoder:
    """One JSON object per line; ``{"error": ...}`` lines are in-band errors."""

    event_stream = False  # an {"error": ...} JSON body is just one more NDJSON line

    def __init__(self, adapter: OllamaAdapter) -> None:
        self._adapter = adapter
        self._tools = ToolCallIndexer(adapter.type_name)
        self.done = False

    def feed(self, line: str) -> Iterable[StreamChunk]:
        if not line.strip():
            return ()
        payload = self._adapter.parse_event(line)
        if not isinstance(payload, dict):
            raise self._adapter.malformed("stream line is not an object", line)
        message = payload.get("message") or {}
        text = answer_text(message.get("content"))
        deltas = tuple(
            self._tools.start(self._tools.count, c.id, c.name, c.arguments)
            for c in self._adapter.tool_calls(message)
        )
        if not payload.get("done"):
            return [StreamChunk(text=text, tool_calls=deltas)] if text or deltas else ()
        self.done = True
        reason = settle_finish(DONE_REASONS.get(str(payload.get("done_reason"))), self._tools.count > 0)
        return [StreamChunk(text=text, tool_calls=deltas, finish_reason=reason, usage=ollama_usage(payload))]

    def finish(self) -> Iterable[StreamChunk]:
        raise self._adapter.malformed('stream ended before a line with "done": true')
