"""A streamed answer held back whole, so that its output contract can still retry.

A stream cannot be taken back, so a streamed answer breaking its JSON schema can only end
with the error once it has been sent (``RequestGovernor.check_answer(streamed=True)``).
When the request asks for a JSON schema and its profile's contract says ``retry``, the
answer is not usable before it is complete anyway (a JSON document is not valid until its
last character): the node then reads each candidate's stream to its end before giving any
of it to the caller, checks the contract, and on failure tries the next candidate as it
would for a unary answer (the dispatcher's fallback on ``output_contract``). The caller
sees only the answer that met the contract, its chunks as the upstream sent them, at
once; the evidence records each failed candidate's ``retry`` and its attempt.

The price is latency: the caller's first chunk comes when the whole answer has been read
(within the caller's deadline). Streams without a JSON schema, or whose contract is
``error`` or ``flag``, are not held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from dataplane.accounting import most
from dataplane.chat import ChatRequest, ChatResponse, FinishReason, Message, Role, StreamChunk, TextPart
from dataplane.governance.errors import CONTRACT_KIND

C = TypeVar("C")
Opener = Callable[[C, float], AsyncIterator[StreamChunk]]
"""Opens one candidate's stream with the time left (``Dispatcher.open_stream``'s ``start``)."""


def holds(request: ChatRequest, fallback_on: frozenset[str]) -> bool:
    """Whether a streamed answer to ``request`` is held whole: it asks for a JSON schema and
    an answer breaking it falls back to the next candidate (``fallback_on``, the request's
    governors' union)."""
    rf = request.response_format
    return CONTRACT_KIND in fallback_on and rf is not None and rf.type == "json_schema"


def held_whole(start: Opener[C], check: Callable[[C, ChatResponse], None]) -> Opener[C]:
    """``start`` with each candidate's stream read to its end and ``check``ed (which raises
    to refuse the candidate's answer) before its first chunk is given."""

    def opened(candidate: C, remaining: float) -> AsyncIterator[StreamChunk]:
        return _whole(start(candidate, remaining), candidate, check)

    return opened


async def _whole(
    stream: AsyncIterator[StreamChunk], candidate: C, check: Callable[[C, ChatResponse], None]
) -> AsyncIterator[StreamChunk]:
    chunks: list[StreamChunk] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    text = "".join(c.text for c in chunks)
    finish = next((c.finish_reason for c in reversed(chunks) if c.finish_reason is not None), None)
    message = Message(Role.ASSISTANT, (TextPart(text),) if text else ())
    usage = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = most(usage, chunk.usage)
    # With the usage its provider sent: an answer refused is counted by it, not an estimate.
    check(candidate, ChatResponse(message, finish or FinishReason.STOP, usage))
    for chunk in chunks:
        yield chunk
