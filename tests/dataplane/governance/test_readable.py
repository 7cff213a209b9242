"""Values written to hide from a pattern but not from a reader (zero-width characters between
their characters, fullwidth forms, other scripts' digits, unusual spaces) are found by the
built-in detectors through the governor, unary and streamed, and edited as written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.chat import ChatRequest, Message, Role, StreamChunk, TextPart, ToolCall, ToolCallDelta
from dataplane.governance.detect import build
from dataplane.governance.errors import Blocked
from dataplane.governance.readable import find, readable
from tests.dataplane.governance.test_enforce import ask, governor, rule, stream
from tests.dataplane.governance.test_stream_tool_calls import fed

ZWSP, ZWJ, SHY, WJ, NNBSP = "\u200b", "\u200d", "\u00ad", "\u2060", "\u202f"


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


EVASIONS = [
    ("payment_card", ZWSP.join(["4111", "1111", "1111", "1111"])),
    ("payment_card", _fullwidth("4111 1111 1111 1111")),
    ("payment_card", "\u0664\u0661\u0661\u0661" + "\u0661" * 12),  # Arabic-Indic digits
    ("payment_card", "4111" + SHY + "1111" + WJ + "1111" + ZWJ + "1111"),
    ("payment_card", "\u0301".join("4111111111111111")),  # combining acute
    ("payment_card", "4\u20e3111 1111 1\u0332111 1111"),  # keycap, combining low line
    ("iban", "DE89" + ZWSP + "3704" + ZWSP + "0044 0532 0130 00"),
    ("email", "ada" + ZWJ + ".lovelace@exam" + ZWSP + "ple.org"),
    ("email", _fullwidth("ada.lovelace@example.org")),
    ("phone", "+49" + NNBSP + "30" + NNBSP + "901820"),
    ("credential", "AKIA" + ZWSP + "IOSFODNN7EXAMPLE"),
]


@pytest.mark.parametrize(("detector", "value"), EVASIONS)
def test_a_value_hidden_from_patterns_is_blocked_and_redacted_whole(detector: str, value: str) -> None:
    text = f"here it is: {value} thanks"
    with pytest.raises(Blocked):
        governor({"input": {"rules": [rule("r", detector, "block")]}}).govern_input(ask(text), [])
    actions: list[dict[str, Any]] = []
    body = governor({"input": {"rules": [rule("r", detector, "redact")]}}).govern_input(ask(text), actions)
    assert body.messages[0].text == "here it is: [REDACTED] thanks"  # type: ignore[union-attr]
    (entry,) = actions
    position = entry["positions"][0]
    assert (position["start"], position["end"]) == (len("here it is: "), len("here it is: ") + len(value))
    assert value not in json.dumps(actions, ensure_ascii=False)


@pytest.mark.parametrize(("detector", "value"), EVASIONS)
def test_a_streamed_value_hidden_from_patterns_is_redacted(detector: str, value: str) -> None:
    text = f"here it is: {value} thanks" + " and more" * 40
    g = governor({"output": {"window": 64, "rules": [rule("r", detector, "redact")]}})
    out, error, _ = stream(g, [text[i : i + 3] for i in range(0, len(text), 3)])
    assert error is None
    assert "".join(out) == text.replace(value, "[REDACTED]")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["", ZWSP, ZWJ + SHY, "\ufeff"]), min_size=21, max_size=21))
def test_offsets_map_back_to_the_value_as_written(hidden: list[str]) -> None:
    card = "4111 1111 1111 1111"
    # What was left out right after its last character goes with it (as a JSON escape must).
    value = "".join(c + h for c, h in zip(card, hidden, strict=False))
    text = hidden[19] + "pay " + hidden[20] + value + " now"
    (span,) = find(build("payment_card").find, readable(text))
    assert text[span.start : span.end] == value


@pytest.mark.parametrize("size", [1, 4, 9, 500])
def test_streamed_tool_call_arguments_written_with_json_escapes_are_redacted(size: int) -> None:
    card = "\\u0034111 1111 1111 111\\u0031"
    arguments = (
        '{"to": "ada.lovelace\\u0040example\\u002eorg", "card": "' + card + '", "n": "' + "x" * 300 + '"}'
    )
    assert json.loads(arguments)["to"] == "ada.lovelace@example.org"
    pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    chunks = [StreamChunk(tool_calls=(ToolCallDelta(0, "c1", "send", pieces[0]),))]
    chunks += [StreamChunk(tool_calls=(ToolCallDelta(0, arguments_fragment=p),)) for p in pieces[1:]]
    rules = [rule("pii", "email", "redact"), rule("card", "payment_card", "redact")]
    out, error, actions = fed({"output": {"window": 128, "rules": rules}}, chunks)
    assert error is None
    sent = json.loads("".join(d.arguments_fragment for c in out for d in c.tool_calls))
    assert (sent["to"], sent["card"], sent["n"]) == ("[REDACTED]", "[REDACTED]", "x" * 300)
    assert [a["count"] for a in actions] == [1, 1]


ESCAPED_EMAIL = "ada.lovelace\\u0040example\\u002eorg"
ESCAPED_CARD = "\\u0034111 1111 1111 111\\u0031"


@pytest.mark.parametrize(
    "result",
    [
        '{"customer": {"email": "' + ESCAPED_EMAIL + '", "card": "' + ESCAPED_CARD + '"}}',
        "lookup done: email=" + ESCAPED_EMAIL + " card=" + ESCAPED_CARD + " (truncated",
    ],
    ids=["json", "not-json"],
)
def test_a_tool_result_with_json_escapes_is_read_decoded_and_edited_as_written(result: str) -> None:
    """A tool result's text is plain text to the request, but a model reads ``\\u0040`` as the
    ``@`` it stands for, in a JSON document or not: found, and redacted or masked whole."""
    body = ChatRequest(
        messages=(
            Message(Role.ASSISTANT, tool_calls=(ToolCall("c1", "lookup", "{}"),)),
            Message(Role.TOOL, (TextPart(result),), tool_call_id="c1"),
        )
    )
    with pytest.raises(Blocked):
        governor({"input": {"rules": [rule("r", "email", "block")]}}).govern_input(body, [])
    actions: list[dict[str, Any]] = []
    g = governor({"input": {"rules": [rule("e", "email", "mask"), rule("c", "payment_card", "redact")]}})
    edited = g.govern_input(body, actions)
    assert isinstance(edited, ChatRequest)
    text = edited.messages[1].text
    assert text == result.replace(ESCAPED_EMAIL, "[EMAIL_1]").replace(ESCAPED_CARD, "[REDACTED]")
    start = result.index(ESCAPED_EMAIL)
    position = actions[0]["positions"][0]
    assert (position["field"], position["start"], position["end"]) == (
        "messages[1].content[0]",
        start,
        start + len(ESCAPED_EMAIL),
    )
    assert g.restore("to [EMAIL_1]") == "to " + ESCAPED_EMAIL  # given back as it was written


def test_a_streamed_answer_with_json_escapes_is_read_decoded() -> None:
    text = '{"email": "' + ESCAPED_EMAIL + '", "note": "' + "x" * 200 + '"}'
    g = governor({"output": {"window": 96, "rules": [rule("r", "email", "redact")]}})
    out, error, actions = stream(g, [text[i : i + 5] for i in range(0, len(text), 5)])
    assert error is None
    assert json.loads("".join(out)) == {"email": "[REDACTED]", "note": "x" * 200}
    assert actions[0]["count"] == 1


START_UP = """
import sys
import dataplane.app  # what a node imports when it starts
from dataplane.governance import readable
called = set()
def watch(frame, event, arg):
    if event == "call" and frame.f_code.co_filename == readable.__file__:
        called.add(frame.f_code.co_name)
sys.setprofile(watch)
view = readable.readable("card \\uff14\\u0661\\u0661\\u0661 1111\\u200b1111 1111")
sys.setprofile(None)
assert view.text == "card 4111 11111111 1111", view.text
print(" ".join(sorted(called)))
"""


def test_the_reading_table_is_built_when_the_node_starts_not_on_a_request() -> None:
    """Built on the first non-ASCII text, the table cost that request ~20 ms in each worker."""
    done = subprocess.run(
        [sys.executable, "-c", START_UP],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    called = done.stdout.split()
    assert "readable" in called  # the hook saw the module's functions
    assert not [name for name in called if "table" in name]  # the table was there already
