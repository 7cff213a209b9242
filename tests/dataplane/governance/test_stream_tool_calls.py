"""Output rules over streamed tool call arguments, the governor called directly: each call's
arguments are their own text, held back at most the window, blocked, redacted (as JSON) and
restored like the answer's content."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import pytest

from dataplane.chat import FinishReason, StreamChunk, ToolCallDelta
from dataplane.errors import SignalboxError
from dataplane.governance.errors import Blocked
from tests.dataplane.governance.test_enforce import EMAIL, ask, governor, no_values, rule

WINDOW = 32


def fed(
    profile: dict[str, Any], chunks: list[StreamChunk], *, masked: str = ""
) -> tuple[list[StreamChunk], SignalboxError | None, list[dict[str, Any]]]:
    """What the governor let out of each chunk (then its tail), the refusal if it ended the
    stream, and the evidence entries."""
    g = governor(profile)
    if masked:
        g.govern_input(ask(f"mail {masked}"), [])
    actions: list[dict[str, Any]] = []
    s = g.stream(actions)
    out: list[StreamChunk] = []
    try:
        for chunk in chunks:
            out.append(s.feed(chunk))
        tail = s.finish()
        if tail is not None:
            out.append(tail)
    except SignalboxError as exc:
        return out, exc, actions
    return out, None, actions


def call_chunks(fragments: list[str], index: int = 0, *, finish: bool = True) -> list[StreamChunk]:
    """A tool call streamed as OpenAI does: id and name first, then argument fragments."""
    chunks = [StreamChunk(tool_calls=(ToolCallDelta(index, id=f"call_{index}", name="send"),))]
    chunks += [StreamChunk(tool_calls=(ToolCallDelta(index, arguments_fragment=f),)) for f in fragments]
    if finish:
        chunks.append(StreamChunk(finish_reason=FinishReason.TOOL_CALLS))
    return chunks


def arguments(out: list[StreamChunk], index: int = 0) -> str:
    return "".join(d.arguments_fragment for c in out for d in c.tool_calls if d.index == index)


def test_a_blocked_term_in_streamed_arguments_ends_the_stream_within_the_window() -> None:
    profile = {
        "output": {
            "window": WINDOW,
            "rules": [rule("codename", "terms", "block", options={"terms": ["falcon"]})],
        }
    }
    words = [f"w{i:02d} " for i in range(40)]
    k = 20
    words[k] = "fal"
    words[k + 1] = "con "
    fragments = ['{"note": "', *words, '"}']
    out, error, actions = fed(profile, call_chunks(fragments))
    assert isinstance(error, Blocked)
    sent = arguments(out)
    assert "fal" not in sent
    # The call's id and name went out at once; its arguments at most the window late.
    assert out[0].tool_calls[0].id == "call_0"
    assert out[0].tool_calls[0].name == "send"
    fed_fragments = len(out) - 1  # chunks fed before the refusal, after the opening one
    assert len("".join(fragments[:fed_fragments])) - len(sent) <= WINDOW
    (entry,) = actions
    (position,) = entry["positions"]
    # Chunks of the field: the opening '{"note": "' is its chunk 0, word i its chunk i + 1.
    assert position["field"] == "message.tool_calls[0].arguments"
    assert position["chunk"] == k + 1
    assert position["start"] == len("".join(fragments[: k + 1]))
    assert k + 1 <= entry["ended_at_chunk"] <= k + 1 + WINDOW


def test_streamed_arguments_are_redacted_as_json_and_each_call_is_its_own_text() -> None:
    # A finding of up to half the window is always seen whole before any of it goes out.
    profile = {
        "output": {
            "window": 2 * len(EMAIL),
            "rules": [rule("pii", "email", "redact", placeholder='["email"]')],
        }
    }
    first = json.dumps({"to": EMAIL, "cc": "nobody"})
    second = json.dumps({"note": "write to " + EMAIL})
    chunks = call_chunks([first[i : i + 3] for i in range(0, len(first), 3)], 0, finish=False)
    chunks += call_chunks([second[i : i + 5] for i in range(0, len(second), 5)], 1)
    out, error, actions = fed(profile, chunks)
    assert error is None
    assert json.loads(arguments(out, 0)) == {"to": '["email"]', "cc": "nobody"}
    assert json.loads(arguments(out, 1)) == {"note": 'write to ["email"]'}
    (entry,) = actions
    assert entry["count"] == 2
    assert [p["field"] for p in entry["positions"]] == [
        "message.tool_calls[0].arguments",
        "message.tool_calls[1].arguments",
    ]
    assert entry["positions"][0]["start"] == first.index(EMAIL)
    no_values(actions, EMAIL)
    # Nothing was sent that the rules had not seen: every chunk's fragments are released text.
    assert all(c.text == "" for c in out)


def test_content_and_arguments_interleaved_are_governed_apart() -> None:
    profile = {"output": {"window": 2 * len(EMAIL), "rules": [rule("pii", "email", "redact")]}}
    text = f"Mailing {EMAIL} now."
    args = json.dumps({"to": EMAIL})
    chunks: list[StreamChunk] = [StreamChunk(tool_calls=(ToolCallDelta(0, id="c", name="send"),))]
    for i in range(max(len(text), len(args)) // 4 + 1):
        chunks.append(
            StreamChunk(
                text=text[i * 4 : i * 4 + 4],
                tool_calls=(ToolCallDelta(0, arguments_fragment=args[i * 4 : i * 4 + 4]),),
            )
        )
    chunks.append(StreamChunk(finish_reason=FinishReason.TOOL_CALLS))
    out, error, actions = fed(profile, chunks)
    assert error is None
    assert "".join(c.text for c in out) == "Mailing [REDACTED] now."
    assert json.loads(arguments(out)) == {"to": "[REDACTED]"}
    assert {p["field"] for p in actions[0]["positions"]} == {
        "message.text",
        "message.tool_calls[0].arguments",
    }


@pytest.mark.parametrize("finish", [True, False])
def test_masked_values_split_over_argument_fragments_are_restored_whole(finish: bool) -> None:
    profile = {"input": {"rules": [rule("mask-email", "email", "mask")]}}
    out, error, _ = fed(
        profile, call_chunks(['{"to": "[EMA', 'IL_1]", ', '"n": 1}'], finish=finish), masked=EMAIL
    )
    assert error is None
    # Only the partial placeholder was held back: the rest went out as it came.
    assert [d.arguments_fragment for c in out for d in c.tool_calls] == [
        "",
        '{"to": "',
        f'{EMAIL}", ',
        '"n": 1}',
    ]
    assert json.loads(arguments(out)) == {"to": EMAIL, "n": 1}


def test_a_stream_without_output_rules_or_masks_passes_tool_calls_untouched() -> None:
    chunks = call_chunks(['{"to": "', EMAIL, '"}'])
    out, error, actions = fed({"input": {"rules": [rule("pii", "email", "redact")]}}, chunks)
    assert error is None
    assert all(a is b for a, b in zip(out, chunks, strict=False))
    assert actions == []


def test_stream_chunks_have_the_fields_the_governor_copies() -> None:
    # StreamGovernor.feed builds a released chunk from these four: a new field must be
    # copied there too.
    assert [f.name for f in fields(StreamChunk)] == ["text", "tool_calls", "finish_reason", "usage"]
