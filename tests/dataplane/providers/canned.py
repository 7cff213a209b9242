"""Canned answers in each provider's documented wire format, for the fake upstream.

Shapes follow the providers' API references and recorded streams; each
builder returns the payload or SSE frames, ready for ``json_reply`` /
``sse_reply``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .fakes import ndjson_line, sse_event

# -- OpenAI-shaped canned answers (also what the simulator and compatible servers send) ----------


def openai_completion(
    text: str | None = "Hello!",
    *,
    tool_calls: Sequence[tuple[str, str, str]] = (),
    finish_reason: str = "stop",
    usage: Mapping[str, Any] | None = None,
    model: str = "gpt-test",
) -> dict[str, Any]:
    """A ``chat.completion`` body; ``tool_calls`` are ``(id, name, arguments_json)``."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in tool_calls
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": dict(usage)
        if usage is not None
        else {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def openai_chunk(
    delta: Mapping[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``usage`` and no delta it is the final usage chunk (``choices: []``)."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test",
    }
    if delta is None and usage is not None:
        chunk["choices"] = []
    else:
        chunk["choices"] = [{"index": 0, "delta": dict(delta or {}), "finish_reason": finish_reason}]
    chunk["usage"] = dict(usage) if usage is not None else None
    return chunk


def openai_text_stream(*pieces: str, usage: Mapping[str, Any] | None = None) -> list[bytes]:
    """SSE frames of a streamed text answer, a usage chunk, and ``[DONE]``."""
    frames = [sse_event(openai_chunk({"role": "assistant", "content": ""}))]
    frames += [sse_event(openai_chunk({"content": p})) for p in pieces]
    frames.append(sse_event(openai_chunk({}, "stop")))
    frames.append(sse_event(openai_chunk(usage=usage or {"prompt_tokens": 12, "completion_tokens": 3})))
    frames.append(sse_event("[DONE]"))
    return frames


# -- Anthropic Messages ---------------------------------------------------------------------------


def anthropic_message(
    text: str | None = "Hello!",
    *,
    tool_uses: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
    stop_reason: str = "end_turn",
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Messages response; ``tool_uses`` are ``(id, name, input)``."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": i, "name": n, "input": dict(inp)} for i, n, inp in tool_uses]
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": dict(usage) if usage is not None else {"input_tokens": 12, "output_tokens": 3},
    }


def anthropic_event(data: Mapping[str, Any]) -> bytes:
    return sse_event(dict(data), event=str(data["type"]))


def anthropic_stream(
    *pieces: str,
    tool_uses: Sequence[tuple[str, str, Sequence[str]]] = (),
    stop_reason: str = "end_turn",
    start_usage: Mapping[str, Any] | None = None,
    final_usage: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """A recorded-shape stream: text block (if ``pieces``), then tool blocks fed ``partial_json`` fragments."""
    message = anthropic_message(None, stop_reason=stop_reason)
    message.update(
        content=[], stop_reason=None, usage=dict(start_usage or {"input_tokens": 12, "output_tokens": 1})
    )
    frames = [
        anthropic_event({"type": "message_start", "message": message}),
        anthropic_event({"type": "ping"}),
    ]
    index = 0
    if pieces:
        frames.append(
            anthropic_event(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            )
        )
        frames += [
            anthropic_event(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            )
            for p in pieces
        ]
        frames.append(anthropic_event({"type": "content_block_stop", "index": 0}))
        index = 1
    for call_id, name, fragments in tool_uses:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        frames.append(
            anthropic_event({"type": "content_block_start", "index": index, "content_block": block})
        )
        frames += [
            anthropic_event(
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": f},
                }
            )
            for f in ("", *fragments)
        ]
        frames.append(anthropic_event({"type": "content_block_stop", "index": index}))
        index += 1
    frames.append(
        anthropic_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": dict(final_usage or {"output_tokens": 3}),
            }
        )
    )
    frames.append(anthropic_event({"type": "message_stop"}))
    return frames


def anthropic_error(type_: str, message: str = "error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}


# -- Gemini ---------------------------------------------------------------------------------------


def gemini_response(
    text: str | None = "Hello!",
    *,
    calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
    finish_reason: str | None = "STOP",
    usage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``GenerateContentResponse``; ``calls`` are ``(name, args)`` (Gemini gives no ids)."""
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    parts += [{"functionCall": {"name": n, "args": dict(a)}} for n, a in calls]
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    return {
        "candidates": [candidate],
        "usageMetadata": dict(usage)
        if usage is not None
        else {"promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 15},
        "modelVersion": "gemini-test",
        "responseId": "resp-1",
    }


def gemini_stream(
    *pieces: str,
    calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
    final_usage: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """Text pieces, each with a running usage snapshot, then calls and ``STOP`` in the last event."""
    frames = [
        sse_event(
            gemini_response(
                p, finish_reason=None, usage={"promptTokenCount": 12, "candidatesTokenCount": i + 1}
            )
        )
        for i, p in enumerate(pieces)
    ]
    last = gemini_response(None, calls=calls, usage=final_usage)
    frames.append(sse_event(last))
    return frames


def gemini_error(
    code: int, status: str, message: str = "error", *details: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "error": {"code": code, "message": message, "status": status, "details": [dict(d) for d in details]}
    }


# -- Ollama native /api/chat ----------------------------------------------------------------------


def ollama_response(
    text: str = "Hello!",
    *,
    calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
    done_reason: str = "stop",
    prompt_eval_count: int = 12,
    eval_count: int = 3,
) -> dict[str, Any]:
    """A final ``/api/chat`` object; ``calls`` are ``(name, arguments)`` with no ids."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [{"function": {"name": n, "arguments": dict(a)}} for n, a in calls]
    return {
        "model": "llama-test",
        "created_at": "2026-01-01T00:00:00Z",
        "message": message,
        "done": True,
        "done_reason": done_reason,
        "total_duration": 1000,
        "prompt_eval_count": prompt_eval_count,
        "eval_count": eval_count,
    }


def ollama_stream(
    *pieces: str, calls: Sequence[tuple[str, Mapping[str, Any]]] = (), eval_count: int = 3
) -> list[bytes]:
    """NDJSON lines: one per text piece, one per call, then the ``done`` line with the counts."""
    lines = [
        ndjson_line({"model": "llama-test", "message": {"role": "assistant", "content": p}, "done": False})
        for p in pieces
    ]
    lines += [
        ndjson_line(
            {
                "model": "llama-test",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": n, "arguments": dict(a)}}],
                },
                "done": False,
            }
        )
        for n, a in calls
    ]
    lines.append(ndjson_line(ollama_response("", eval_count=eval_count)))
    return lines
