"""Answer digests are what evidence records carry as ``response_sha256``: their bytes must
not change when the code computing them does (records already written are compared with them)."""

from __future__ import annotations

from dataplane.chat import ChatResponse, FinishReason, Message, Role, StreamChunk, TextPart, ToolCall
from dataplane.pipeline.digests import Assembler, answer_digest


def test_an_answer_digests_to_the_same_value_as_ever() -> None:
    # Values computed by the field-by-field implementation this one replaced.
    call = ToolCall("call_1", "get_weather", '{"city":"Paris"}')
    message = Message(Role.ASSISTANT, (TextPart("Hello, wörld"),), tool_calls=(call,))
    assert answer_digest(ChatResponse(message, FinishReason.STOP)) == (
        "d1925c7cd8abc63a92b44769823485ea41053a0f8a918e3e62ff829d2dd89129"
    )
    empty = Assembler()
    assert empty.digest() == "374708fff7719dd5979ec875d56cd2286f6d3cf7ec317a3b25632aab28ec37bb"
    streamed = Assembler()
    streamed.add(StreamChunk(text="Hello, "))
    streamed.add(StreamChunk(text="wörld", finish_reason=FinishReason.STOP))
    assert streamed.digest() == answer_digest(
        ChatResponse(Message(Role.ASSISTANT, (TextPart("Hello, wörld"),)), FinishReason.STOP)
    )
