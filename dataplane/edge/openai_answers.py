"""Plain values -> OpenAI's JSON: the HTTP front door's edge, outbound.

Answers use OpenAI's exact shapes: ``chat.completion``, ``chat.completion.chunk`` (with
``stream_options.include_usage``), ``list`` of ``embedding`` (float or base64), ``list`` of
``model``, and the error object. Inbound is ``dataplane.edge.openai``.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson

from dataplane.chat import ChatResponse, EmbedResponse, FinishReason, StreamChunk, ToolCall, Usage


def _usage(usage: Usage | None) -> dict[str, Any]:
    """OpenAI's usage object, every detail it has: the cached and reasoning parts as the
    provider reported them (0 where it reports none, as OpenAI answers for a model that does
    not reason), audio and predicted-output tokens 0 (neither is implemented)."""
    usage = usage or Usage()
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_output_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def completion(response_id: str, model: str, result: ChatResponse, created: int | None = None) -> bytes:
    message = result.message
    text = message.text
    out: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if message.tool_calls:
        out["tool_calls"] = [_tool_call(c) for c in message.tool_calls]
    return orjson.dumps(
        {
            "id": response_id,
            "object": "chat.completion",
            "created": int(time.time()) if created is None else created,
            "model": model,
            "choices": [
                {"index": 0, "message": out, "logprobs": None, "finish_reason": result.finish_reason.value}
            ],
            "usage": _usage(result.usage),
            "system_fingerprint": None,
        }
    )


class ChunkWriter:
    """The ``chat.completion.chunk`` events of one stream, as SSE ``data:`` lines."""

    def __init__(self, response_id: str, model: str, include_usage: bool) -> None:
        self._head = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self._include_usage = include_usage
        self._tool_ids: dict[int, str] = {}

    def _event(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            **self._head,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def opened(self) -> bytes:
        return self._event({"role": "assistant", "content": "", "refusal": None})

    def chunk(self, chunk: StreamChunk) -> bytes:
        delta: dict[str, Any] = {}
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.tool_calls:
            calls = []
            for call in chunk.tool_calls:
                entry: dict[str, Any] = {"index": call.index}
                if call.id and call.index not in self._tool_ids:
                    self._tool_ids[call.index] = call.id
                    entry["id"] = call.id
                    entry["type"] = "function"
                function: dict[str, str] = {}
                if call.name:
                    function["name"] = call.name
                function["arguments"] = call.arguments_fragment
                entry["function"] = function
                calls.append(entry)
            delta["tool_calls"] = calls
        return self._event(delta) if delta else b""

    def closed(self, finish_reason: FinishReason | None, usage: Usage | None) -> bytes:
        out = self._event({}, (finish_reason or FinishReason.STOP).value)
        if self._include_usage:
            out += (
                b"data: "
                + orjson.dumps(
                    {**self._head, "system_fingerprint": None, "choices": [], "usage": _usage(usage)}
                )
                + b"\n\n"
            )
        return out + b"data: [DONE]\n\n"


def embeddings(model: str, result: EmbedResponse, encoding: str) -> bytes:
    data = []
    for i, vector in enumerate(result.vectors):
        value: Any = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if encoding == "base64"
            else list(vector)
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = result.usage or Usage()
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens},
        }
    )


def _model_object(alias: str, owner: str) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": 0, "owned_by": owner}


def models(aliases: list[str], owner: str = "signalbox") -> bytes:
    return orjson.dumps({"object": "list", "data": [_model_object(alias, owner) for alias in aliases]})


def model(alias: str, owner: str = "signalbox") -> bytes:
    """One model object, as ``GET /v1/models/{model}`` answers."""
    return orjson.dumps(_model_object(alias, owner))


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    501: "invalid_request_error",  # something the request asks for is not implemented
}


def error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """OpenAI's error object."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})
