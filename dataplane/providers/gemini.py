"""Google's Gemini API (``generateContent``, ``streamGenerateContent?alt=sse``, embeddings).

``base_url`` defaults to ``https://generativelanguage.googleapis.com/v1beta``;
the model is named in the path (a leading ``models/`` is accepted). The
credential goes in ``x-goog-api-key``.

Translation policies:

- System and developer messages are joined with ``\\n`` into ``systemInstruction``.
- Gemini's function calls carry no ids: one is synthesized per call, and a
  tool result is sent back as a ``functionResponse`` under the name of the
  call it answers (looked up by ``tool_call_id`` in the conversation, or the
  tool message's ``name``). A result that is a JSON object is sent as the
  response object; anything else as ``{"result": text}``.
- ``finishReason: STOP`` next to ``functionCall`` parts means ``tool_calls``;
  the safety family means ``content_filter``; ``MALFORMED_FUNCTION_CALL`` and
  ``UNEXPECTED_TOOL_CALL`` raise a (retryable) protocol error, since the
  model produced no usable answer.
- A prompt blocked before any candidate (``promptFeedback.blockReason``)
  raises ``ContentFiltered``.
- ``usageMetadata`` is a running snapshot on every chunk; the last one wins.
- Tool parameter schemas (and a ``json_schema`` response format) are
  translated to Gemini's OpenAPI subset by ``gemini_schema``: ``$schema``,
  ``additionalProperties`` and the like are dropped, local ``$ref``s inlined,
  what cannot be expressed refused naming the tool and path.
- A ``json_schema`` response format's ``description`` has no place in Gemini's
  ``generationConfig`` and is not sent (the schema is not rewritten to hold it).
- Function-call ``args`` that are not a JSON object are malformed output
  (``UpstreamProtocolError``), never handed to the caller; see ``wire.tool_arguments``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
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
from dataplane.errors import UpstreamBadRequest

from .classify import ErrorFacts, classify_error, parse_duration, text_of, tokens_of
from .gemini_schema import gemini_schema
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
    tool_names_by_id,
)

FINISH_REASONS: Mapping[str, FinishReason] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    **dict.fromkeys(
        (
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "IMAGE_SAFETY",
            "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_RECITATION",
        ),
        FinishReason.CONTENT_FILTER,
    ),
}
FAILED_CALL_REASONS = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"})

TOOL_MODES: Mapping[str, str] = {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}


class GeminiAdapter(HttpAdapter):
    """Gemini's native API; a candidate's ``parts`` become text and tool calls."""

    type_name: ClassVar[str] = "gemini"
    default_base_url: ClassVar[str] = "https://generativelanguage.googleapis.com/v1beta"

    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._credential} if self._credential else {}

    def _url(self, model: str, method: str) -> str:
        return f"{self.base_url}/models/{model.removeprefix('models/')}:{method}"

    async def complete(self, model: str, request: ChatRequest, *, timeout: float) -> ChatResponse:
        """One ``generateContent`` call."""
        url = self._url(model, "generateContent")
        return await self.post_parsed(url, self.request_body(request), self.parse_response, timeout=timeout)

    def parse_response(self, payload: Any) -> ChatResponse:
        """A ``GenerateContentResponse``: the first candidate's parts."""
        candidate = self.first_candidate(payload)
        texts, calls = self._parts(candidate)
        return assistant_response(
            "".join(texts),
            calls,
            self.finish_reason(candidate.get("finishReason")),
            usage=gemini_usage(payload.get("usageMetadata")),
            upstream_model=payload.get("modelVersion"),
            upstream_id=payload.get("responseId"),
            provider=self.type_name,
        )

    def stream(self, model: str, request: ChatRequest, *, timeout: float) -> AsyncIterator[StreamChunk]:
        """``streamGenerateContent`` as SSE; the stream simply ends (there is no terminator)."""
        return self.stream_chunks(
            self._url(model, "streamGenerateContent"),
            lambda: self.request_body(request),
            GeminiStreamDecoder(self),
            timeout=timeout,
            params={"alt": "sse"},
        )

    async def embed(self, model: str, request: EmbedRequest, *, timeout: float) -> EmbedResponse:
        """``embedContent`` for one input, ``batchEmbedContents`` for several."""
        name = model.removeprefix("models/")
        extra = {"outputDimensionality": request.dimensions} if request.dimensions is not None else {}
        count = len(request.inputs)

        def parse(payload: Any) -> EmbedResponse:
            rows = [payload["embedding"]] if count == 1 else payload["embeddings"]
            return EmbedResponse(
                vectors=self.vectors((r["values"] for r in rows), count), upstream_model=name
            )

        if count == 1:
            body: dict[str, Any] = {"content": {"parts": [{"text": request.inputs[0]}]}, **extra}
            return await self.post_parsed(self._url(model, "embedContent"), body, parse, timeout=timeout)
        body = {
            "requests": [
                {"model": f"models/{name}", "content": {"parts": [{"text": text}]}, **extra}
                for text in request.inputs
            ]
        }
        return await self.post_parsed(self._url(model, "batchEmbedContents"), body, parse, timeout=timeout)

    def error_facts(self, payload: Any) -> ErrorFacts | None:
        """``{"error": {"code", "message", "status", "details": [ErrorInfo, RetryInfo, ...]}}``."""
        if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
            return None
        error = payload["error"]
        # A list of objects, or no details: iterating a number raised TypeError (a string of
        # characters, none of them an object, gave nothing).
        listed = error.get("details")
        details = [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []
        retry = next((parse_duration(d.get("retryDelay")) for d in details if "retryDelay" in d), None)
        return ErrorFacts(
            # ErrorInfo.reason first: a bad key is 400 INVALID_ARGUMENT with reason API_KEY_INVALID.
            tokens=tokens_of(*(d.get("reason") for d in details), error.get("status"), error.get("code")),
            message=text_of(error.get("message")),
            retry_after=retry,
        )

    # -- request -------------------------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": self._contents(request.messages)}
        if system := system_prompt(request.messages):
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config = self._generation_config(request)
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        {
                            "name": t.name,
                            **({"description": t.description} if t.description else {}),
                            **(
                                {"parameters": gemini_schema(t.parameters, f"parameters of tool {t.name!r}")}
                                if t.parameters
                                else {}
                            ),
                        }
                        for t in request.tools
                    ]
                }
            ]
            if request.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": self._calling_config(request.tool_choice)}
        return body

    @staticmethod
    def _calling_config(choice: ToolChoice) -> dict[str, Any]:
        config: dict[str, Any] = {"mode": TOOL_MODES[choice.mode]}
        if choice.mode == "tool":
            config["allowedFunctionNames"] = [choice.name]
        return config

    @staticmethod
    def _generation_config(request: ChatRequest) -> dict[str, Any]:
        params = request.params
        config: dict[str, object] = {
            "maxOutputTokens": params.max_output_tokens,
            "temperature": params.temperature,
            "topP": params.top_p,
            "stopSequences": list(params.stop) or None,
            "seed": params.seed,
            "presencePenalty": params.presence_penalty,
            "frequencyPenalty": params.frequency_penalty,
        }
        fmt = request.response_format
        if fmt is not None and fmt.type != "text":
            config["responseMimeType"] = "application/json"
            if fmt.type == "json_schema" and fmt.schema:
                config["responseSchema"] = gemini_schema(fmt.schema, "response_format schema")
        return {k: v for k, v in config.items() if v is not None}

    def _contents(self, messages: tuple[Message, ...]) -> list[dict[str, Any]]:
        names = tool_names_by_id(messages)
        contents: list[dict[str, Any]] = []
        for message in conversation(messages):
            role = "model" if message.role is Role.ASSISTANT else "user"
            parts = self._message_parts(message, names)
            if not parts:
                continue
            if contents and contents[-1]["role"] == role:
                # All function responses for one model turn must arrive in one user turn.
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": role, "parts": parts})
        return contents

    def _message_parts(self, message: Message, names: Mapping[str, str]) -> list[dict[str, Any]]:
        if message.role is Role.TOOL:
            name = message.name or names.get(message.tool_call_id, "")
            if not name:
                raise UpstreamBadRequest(
                    f"{self.type_name}: tool result {message.tool_call_id!r} answers no tool call in the conversation",
                    provider=self.type_name,
                )
            return [{"functionResponse": {"name": name, "response": _response_object(message.text)}}]
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                if part.text:
                    parts.append({"text": part.text})
            else:
                parts.append(_image_part(part))
        for call in message.tool_calls:
            parts.append(
                {"functionCall": {"name": call.name, "args": arguments_object(self.type_name, call)}}
            )
        return parts

    # -- response ------------------------------------------------------------------------------

    def first_candidate(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The first candidate; a prompt blocked before generation is a content-filter error."""
        candidates = payload.get("candidates") or ()
        if candidates and isinstance(candidates[0], dict):
            return candidates[0]
        block = (payload.get("promptFeedback") or {}).get("blockReason")
        if block:
            raise classify_error(
                self.type_name,
                status=None,
                facts=ErrorFacts(tokens=("content_filter", str(block))),
                body=json.dumps(payload),
                credential=self._credential,
            )
        raise self.malformed("no candidates", json.dumps(payload))

    def finish_reason(self, value: object) -> FinishReason | None:
        if value is None:
            return None
        if value in FAILED_CALL_REASONS:
            raise self.malformed(f"the model's function call failed ({value})")
        return FINISH_REASONS.get(str(value), FinishReason.STOP)

    @staticmethod
    def _parts(candidate: Mapping[str, Any]) -> tuple[list[str], list[ToolCall]]:
        texts: list[str] = []
        calls: list[ToolCall] = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if not isinstance(part, dict):
                raise TypeError("a part is not an object")  # reported by HttpAdapter.decoding
            if "functionCall" in part:
                call = part["functionCall"] or {}
                calls.append(
                    ToolCall(
                        id=answer_label(call.get("id")) or synthesize_call_id(),
                        name=tool_name("gemini", call.get("name")),
                        arguments=arguments_text("gemini", call.get("args")),
                    )
                )
            elif "text" in part and not part.get("thought"):
                texts.append(answer_text(part["text"]))
        return texts, calls


def _response_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # not JSON, or nested past the recursion limit
        value = None
    return value if isinstance(value, dict) else {"result": text}


def _image_part(part: ImagePart) -> dict[str, Any]:
    inline = image_base64(part)
    if inline is not None:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    return {"fileData": {"mimeType": part.media_type or "image/*", "fileUri": part.url}}


def gemini_usage(metadata: object) -> Usage | None:
    """``promptTokenCount`` already includes cached content; thoughts are billed as output."""
    if not isinstance(metadata, dict):
        return None
    return Usage(
        input_tokens=token_count(metadata.get("promptTokenCount"))
        + token_count(metadata.get("toolUsePromptTokenCount")),
        output_tokens=token_count(metadata.get("candidatesTokenCount"))
        + token_count(metadata.get("thoughtsTokenCount")),
        cached_input_tokens=token_count(metadata.get("cachedContentTokenCount")),
        reasoning_output_tokens=token_count(metadata.get("thoughtsTokenCount")),
    )


class GeminiStreamDecoder(SSEStreamDecoder):
    """Each SSE event is a whole ``GenerateContentResponse``; calls arrive whole, usage as snapshots."""

    missing_terminator: ClassVar[str] = "a finishReason"

    def __init__(self, adapter: GeminiAdapter) -> None:
        super().__init__(adapter)
        self._gemini = adapter
        self._tools = ToolCallIndexer(adapter.type_name)
        self._finished = False

    @property
    def complete(self) -> bool:
        # Gemini has no terminator: the body simply ends, after a finishReason.
        return self._finished

    def on_event(self, payload: dict[str, Any] | None) -> list[StreamChunk]:
        if payload is None:
            raise self.adapter.malformed("unexpected [DONE] in a Gemini stream")
        usage = gemini_usage(payload.get("usageMetadata"))
        if not payload.get("candidates") and usage is not None:
            return [StreamChunk(usage=usage)]  # a usage-only snapshot
        candidate = self._gemini.first_candidate(payload)
        texts, calls = GeminiAdapter._parts(candidate)
        deltas = tuple(self._tools.start(self._tools.count, c.id, c.name, c.arguments) for c in calls)
        reason = self._gemini.finish_reason(candidate.get("finishReason"))
        if reason is not None:
            self._finished = True
            reason = settle_finish(reason, self._tools.count > 0)
        text = "".join(texts)
        if not (text or deltas or reason or usage):
            return []
        return [StreamChunk(text=text, tool_calls=deltas, finish_reason=reason, usage=usage)]
