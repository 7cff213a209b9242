"""Digests of answers, the same whichever front door served them: what evidence records
carry as ``response_sha256`` (content itself only for tenants that keep it)."""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

from dataplane.chat import ChatResponse, EmbedResponse, FinishReason, Message, Role, StreamChunk, TextPart


def answer_digest(response: ChatResponse) -> str:
    """SHA-256 of an answer's canonical form (text, tool calls, finish reason): a streamed
    answer digests the same as the same answer served whole."""
    message = response.message
    calls = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    return _canonical_digest(message.text, calls, response.finish_reason)


def embedding_digest(response: EmbedResponse) -> str:
    digest = hashlib.sha256()
    for vector in response.vectors:
        digest.update(len(vector).to_bytes(4, "big"))
        digest.update(array("d", vector).tobytes())
    return digest.hexdigest()


def _canonical_digest(text: str, calls: list[list[str]], finish: object) -> str:
    # Length-prefixed fields: unambiguous, and cheaper than a canonical JSON encoding. Hashed
    # in one call over the joined bytes (the same bytes as field by field: the same digest).
    parts: list[bytes] = []
    for field in (text, str(finish or ""), *(part for call in calls for part in call)):
        data = field.encode()
        parts.append(len(data).to_bytes(8, "big"))
        parts.append(data)
    return hashlib.sha256(b"".join(parts)).hexdigest()


class Assembler:
    """Puts a streamed answer back together, for its digest.

    Pieces are kept in lists and joined once: a tool call's arguments stream in thousands of
    fragments (a token or so each), and adding each to a string copied all before it.
    """

    __slots__ = ("calls", "finish", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[int, tuple[list[str], list[str]]] = {}
        """By tool-call index: [id, name], and the argument fragments."""
        self.finish: Any = None

    def add(self, chunk: StreamChunk) -> None:
        if chunk.text:
            self.text.append(chunk.text)
        for delta in chunk.tool_calls:
            found = self.calls.get(delta.index)
            if found is None:
                found = self.calls[delta.index] = (["", ""], [])
            head, fragments = found
            head[0] = head[0] or delta.id
            head[1] = head[1] or delta.name
            if delta.arguments_fragment:
                fragments.append(delta.arguments_fragment)
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason

    def digest(self) -> str:
        calls = [[h[0], h[1], "".join(f) or "{}"] for _, (h, f) in sorted(self.calls.items())]
        return _canonical_digest("".join(self.text), calls, self.finish)

    def chars(self) -> int:
        """Characters of the answer so far (text, tool call names and arguments)."""
        return sum(map(len, self.text)) + sum(len(h[1]) + sum(map(len, f)) for h, f in self.calls.values())

    def response(self) -> ChatResponse:
        """The answer's text as one response, for the checks of a whole answer."""
        message = Message(Role.ASSISTANT, (TextPart("".join(self.text)),))
        return ChatResponse(message, self.finish or FinishReason.STOP)
