"""Answer digests are what evidence records carry as ``response_sha256``: their bytes must
not change when the code computing them does (records already written are compared with them)."""

from __future__ import annotations

import time

from dataplane.chat import ChatResponse, FinishReason, Message, Role, StreamChunk, TextPart, ToolCall
from dataplane.chat import ToolCallDelta as Delta
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


def test_tool_call_arguments_in_many_fragments_are_assembled_in_linear_time() -> None:
    """Each fragment was added to a string holding all before it, copying it whole each
    time: 1.2 MB of arguments streamed four characters (about a token) at a time copied
    180 GB, tens of seconds of the node's one event loop for one stream."""
    fragments = 300_000
    assembled = Assembler()
    assembled.add(StreamChunk(tool_calls=(Delta(0, "call_1", "write_file", '{"text": "'),)))
    started = time.monotonic()
    for _ in range(fragments):
        assembled.add(StreamChunk(tool_calls=(Delta(0, arguments_fragment="abcd"),)))
    closing = Delta(0, arguments_fragment='"}')
    assembled.add(StreamChunk(tool_calls=(closing,), finish_reason=FinishReason.TOOL_CALLS))
    assert time.monotonic() - started < 5
    arguments = '{"text": "' + "abcd" * fragments + '"}'
    assert assembled.chars() == len("write_file") + len(arguments)
    call = ToolCall("call_1", "write_file", arguments)
    message = Message(Role.ASSISTANT, (), tool_calls=(call,))
    assert assembled.digest() == answer_digest(ChatResponse(message, FinishReason.TOOL_CALLS))
