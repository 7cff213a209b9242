"""A stream under output rules whose request masked values: the cut that holds back a partial
placeholder (``[EMAIL`` sent, ``_1]`` not) never splits what the rules found."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.chat import FinishReason, StreamChunk, ToolCall, ToolCallDelta
from tests.dataplane.governance.test_enforce import EMAIL, answer, ask, governor, rule, stream

INTERNAL = rule("internal", "regex", "redact", options={"patterns": ["INTERNAL:[^\\n]{0,12}"]})


def masked(*rules: dict[str, Any], window: int = 64) -> Any:
    g = governor(
        {"input": {"rules": [rule("m", "email", "mask")]}, "output": {"window": window, "rules": list(rules)}}
    )
    g.govern_input(ask(f"mail {EMAIL}"), [])
    assert g.masks
    return g


def test_an_open_bracket_inside_a_finding_does_not_send_its_beginning() -> None:
    """The cut was moved back to the ``[`` after the rules had queued the finding's redaction:
    ``INTERNAL: the `` went out as written, and the finding was recorded at every release."""
    text = "Hi [EMAIL_1], INTERNAL: the [draft\n" + "z" * 100
    out, error, actions = stream(masked(INTERNAL), list(text))
    assert error is None
    assert "".join(out) == f"Hi {EMAIL}, [REDACTED]\n" + "z" * 100
    (entry,) = actions
    assert entry["count"] == 1


FRAGMENTS = ["[", "]", "[EMAIL_1]", "[EMA", "INTERNAL: a", "INTERNAL: [b", "\n", "word ", " ", "x" * 20]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=30).map("".join),
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=200),
)
def test_a_masked_stream_is_the_unary_answer_in_any_chunks(text: str, sizes: list[int]) -> None:
    pieces: list[str] = []
    at = 0
    for size in sizes * (len(text) // len(sizes) + 1):
        if at >= len(text):
            break
        pieces.append(text[at : at + size])
        at += size
    unary_actions: list[dict[str, Any]] = []
    unary = masked(INTERNAL).govern_output(answer(text), unary_actions)
    out, error, actions = stream(masked(INTERNAL), pieces)
    assert error is None
    assert "".join(out) == unary.message.text
    assert [a["count"] for a in actions] == [a["count"] for a in unary_actions]


# Rules whose findings begin or end inside a placeholder, or run longer than the window (the
# cut then goes to a finding's edge, wherever that is). A redaction is at most half the window
# long (the stream redacts a longer one from where it saw it, as it documents) and never
# begins inside another one's possible text (a scan starting mid-text would pair them else).
EDGE_RULES = [
    rule("tail", "regex", "flag", options={"patterns": ["MAIL_[0-9]\\] [a-z ]{0,30}"]}),
    rule("head", "regex", "flag", options={"patterns": ["[a-z ]{0,30}\\[EMA"]}),
    rule("long", "regex", "flag", options={"patterns": ["x{10,}\\[EMAIL"]}),
    rule("cut", "regex", "redact", options={"patterns": ["IL_[0-9]\\] [a-z]{0,12}"]}),
    rule("open", "regex", "redact", options={"patterns": ["INTERNAL: \\[EM"]}),
]
EDGE_FRAGMENTS = ["[EMAIL_1]", "[EMAIL_2]", "[EMA", "]", " ", "word ", "x" * 14, "INTERNAL: ", "\n"]


def two_values(*rules: dict[str, Any], window: int) -> Any:
    g = governor(
        {"input": {"rules": [rule("m", "email", "mask")]}, "output": {"window": window, "rules": list(rules)}}
    )
    g.govern_input(ask(f"mail {EMAIL} or grace.hopper@example.org"), [])
    return g


def chunked(text: str, sizes: list[int]) -> list[str]:
    pieces: list[str] = []
    at = 0
    while at < len(text):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(text[at : at + size])
        at += size
    return pieces


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(EDGE_FRAGMENTS), min_size=1, max_size=24).map("".join),
    st.lists(st.sampled_from(EDGE_RULES), min_size=1, max_size=3, unique_by=lambda r: r["name"]),
    st.sampled_from([48, 64]),
    st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=40),
)
def test_a_placeholder_a_rule_cuts_at_comes_out_as_in_the_unary_answer(
    text: str, rules: list[dict[str, Any]], window: int, sizes: list[int]
) -> None:
    """A finding's edge inside ``[EMAIL_1]`` moved the cut there: ``[EMA`` went out as
    written, and ``IL_1]`` after it, so the caller never got the value back."""
    unary = two_values(*rules, window=window).govern_output(answer(text), []).message.text
    for pieces in [chunked(text, sizes)] + [[text[:at], text[at:]] for at in range(1, len(text))]:
        out, error, _ = stream(two_values(*rules, window=window), pieces)
        assert error is None
        assert "".join(out) == unary, pieces


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from(EDGE_FRAGMENTS), min_size=1, max_size=16).map("".join),
    st.lists(st.sampled_from(EDGE_RULES), min_size=1, max_size=3, unique_by=lambda r: r["name"]),
    st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=40),
)
def test_a_placeholder_a_rule_cuts_at_in_tool_call_arguments_comes_out_as_in_the_unary_answer(
    note: str, rules: list[dict[str, Any]], sizes: list[int]
) -> None:
    arguments = json.dumps({"note": note})
    unary = two_values(*rules, window=48).govern_output(answer("", ToolCall("c1", "send", arguments)), [])
    s = two_values(*rules, window=48).stream([])
    chunks = [StreamChunk(tool_calls=(ToolCallDelta(0, "c1", "send"),))]
    chunks += [
        StreamChunk(tool_calls=(ToolCallDelta(0, arguments_fragment=p),)) for p in chunked(arguments, sizes)
    ]
    chunks.append(StreamChunk(finish_reason=FinishReason.STOP))
    out = [s.feed(chunk) for chunk in chunks]
    assert s.finish() is None
    sent = "".join(d.arguments_fragment for c in out for d in c.tool_calls)
    assert sent == unary.message.tool_calls[0].arguments
