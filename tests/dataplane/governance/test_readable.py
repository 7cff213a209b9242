"""Values written to hide from a pattern but not from a reader (zero-width characters between
their characters, fullwidth forms, other scripts' digits, unusual spaces) are found by the
built-in detectors through the governor, unary and streamed, and edited as written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.governance.detect import build
from dataplane.governance.errors import Blocked
from dataplane.governance.readable import find, readable
from tests.dataplane.governance.test_enforce import ask, governor, rule, stream

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
    value = "".join(c + h for c, h in zip(card, hidden, strict=False)).rstrip(ZWSP + ZWJ + SHY + "\ufeff")
    text = hidden[19] + "pay " + hidden[20] + value + " now"
    (span,) = find(build("payment_card").find, readable(text))
    assert text[span.start : span.end] == value
