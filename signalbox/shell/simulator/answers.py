"""What the simulated model answers: chat completions and their stream chunks, tool-call
arguments derived from JSON Schema, token counts and hash-derived embeddings.

Pure functions of the request body, no HTTP: the server in ``app.py`` frames them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

EMBEDDING_DIMENSIONS = 16
"""Length of an embedding when the request names no ``dimensions``."""


class BadRequest(ValueError):
    """A request the simulated model cannot answer: a 400, naming the bad ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Answer:
    """What the simulated model says: text or tool calls, with token counts."""

    text: str | None
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def completion(self, completion_id: str, created: int, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = list(self.tool_calls)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
            ],
            "usage": self.usage(),
            "system_fingerprint": "fp_signalbox_sim",
        }

    def chunks(
        self, completion_id: str, created: int, model: str, include_usage: bool
    ) -> list[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_signalbox_sim",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                # OpenAI sends "usage": null on every chunk but the last when usage is asked for.
                out["usage"] = None
            return out

        out = [
            chunk({"role": "assistant", "content": "" if self.text is not None else None, "refusal": None})
        ]
        for piece in _pieces(self.text or ""):
            out.append(chunk({"content": piece}))
        for index, call in enumerate(self.tool_calls):
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function"}
            out.append(
                chunk({"tool_calls": [{**head, "function": {"name": function["name"], "arguments": ""}}]})
            )
            for fragment in _fragments(function["arguments"]):
                out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        out.append(chunk({}, self.finish_reason))
        if include_usage:
            last = chunk({})
            last["choices"] = []
            last["usage"] = self.usage()
            out.append(last)
        return out


def answer_to(body: Mapping[str, Any]) -> Answer:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    prompt_tokens = 3  # every reply is primed with <|start|>assistant<|message|>
    last_user = ""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest("each message must be an object with a 'role'", "messages")
        text = _text_of(message.get("content"))
        prompt_tokens += 3 + count_tokens(text)  # per-message framing, as OpenAI counts it
        if message["role"] == "user":
            last_user = text
    tools = body.get("tools") or []
    prompt_tokens += sum(count_tokens(json.dumps(t, separators=(",", ":"))) for t in tools)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise BadRequest("'max_tokens' must be a positive integer", "max_tokens")

    last = messages[-1]
    tool = _tool_to_call(tools, body.get("tool_choice"), last_user) if last.get("role") != "tool" else None
    if tool is not None:
        call_id = "call_" + hashlib.sha256(f"{tool['name']}:{last_user}".encode()).hexdigest()[:24]
        arguments = json.dumps(_arguments_for(tool.get("parameters") or {}, last_user), separators=(",", ":"))
        call = {"id": call_id, "type": "function", "function": {"name": tool["name"], "arguments": arguments}}
        return Answer(None, (call,), "tool_calls", prompt_tokens, count_tokens(arguments) + 7)

    if last.get("role") == "tool":
        text = f"The tool returned: {_text_of(last.get('content'))}"
    else:
        text = f"Simulated answer to: {last_user}" if last_user else "Simulated answer."
    pieces = list(_pieces(text))
    finish = "stop"
    if limit is not None and len(pieces) > limit:
        pieces, finish = pieces[:limit], "length"
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    text = "".join(pieces)
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return Answer(text, (), finish, prompt_tokens, max(1, len(list(_pieces(text)))))


def _tool_to_call(tools: list[Any], choice: Any, prompt: str) -> dict[str, Any] | None:
    """The tool the simulated model calls, if any: what ``tool_choice`` demands, or,
    under ``auto``, a tool whose name the prompt mentions (or any, if it says "tool")."""
    functions: list[dict[str, Any]] = [
        t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        for f in functions:
            if f.get("name") == name:
                return f
        raise BadRequest(f"tool_choice names an unknown tool {name!r}", "tool_choice")
    if choice == "required":
        return functions[0]
    lowered = prompt.lower()
    for f in functions:
        if str(f.get("name", "")).lower() in lowered:
            return f
    return functions[0] if "tool" in lowered else None


def _arguments_for(schema: Mapping[str, Any], prompt: str) -> Any:
    """A deterministic value that satisfies a (simple) JSON Schema."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties") or {}
        required = schema.get("required")
        names = required if isinstance(required, list) else list(props)
        return {n: _arguments_for(props.get(n) or {}, prompt) for n in names}
    return {
        "string": prompt[:64] or "simulated",
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "array": [],
        "null": None,
    }.get(kind, "simulated")


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise BadRequest("message content must be a string or an array of parts", "messages")


def _pieces(text: str) -> Iterator[str]:
    """Split text into token-like pieces: words with their leading space, as BPE tokenizers do."""
    start = 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            yield text[start:i]
            start = i
    if start < len(text):
        yield text[start:]


def _fragments(arguments: str, size: int = 12) -> Iterator[str]:
    for i in range(0, len(arguments), size):
        yield arguments[i : i + size]


def count_tokens(text: str) -> int:
    """A realistic token estimate: about four characters of English per token."""
    return (len(text) + 3) // 4


def embedding_for(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The simulator's unit-length embedding of ``text``: derived from SHA-256, so stable."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    ints = struct.unpack(f"<{dimensions}i", raw[: dimensions * 4])
    norm = math.sqrt(sum(float(i) * i for i in ints)) or 1.0
    # Rounded through float32 so the float and base64 encodings carry the same numbers.
    return [struct.unpack("<f", struct.pack("<f", i / norm))[0] for i in ints]
