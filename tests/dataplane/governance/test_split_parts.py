"""A message's text parts are read as one text: a value split over two parts (which reach the
model one after the other) is found, edited in every part it touches, and its evidence names
the parts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.chat import ChatRequest, ImagePart, Message, Role, TextPart
from dataplane.governance.errors import Blocked
from tests.dataplane.governance.test_enforce import EMAIL, governor, rule

CARD = "4111 1111 1111 1111"


def parts(*texts: str, role: Role = Role.USER) -> ChatRequest:
    return ChatRequest(messages=(Message(role, tuple(TextPart(t) for t in texts)),))


def texts_of(body: Any) -> list[list[str]]:
    return [[p.text for p in m.content if isinstance(p, TextPart)] for m in body.messages]


def test_a_card_split_over_two_parts_is_blocked_and_redacted_in_both() -> None:
    body = parts("pay with 4111 1111 ", "1111 1111 today")
    with pytest.raises(Blocked):
        governor({"input": {"rules": [rule("c", "payment_card", "block")]}}).govern_input(body, [])
    actions: list[dict[str, Any]] = []
    edited = governor({"input": {"rules": [rule("c", "payment_card", "redact")]}}).govern_input(body, actions)
    assert texts_of(edited) == [["pay with [REDACTED]", " today"]]
    (entry,) = actions
    assert entry["count"] == 1
    assert entry["positions"] == [
        {
            "field": "messages[0].content[0]",
            "start": 9,
            "end": 9,
            "end_field": "messages[0].content[1]",
            "kind": "visa",
        }
    ]


def test_a_value_over_three_parts_and_around_an_image_is_masked_whole() -> None:
    body = ChatRequest(
        messages=(
            Message(
                Role.USER,
                (
                    TextPart("mail ada.lovelace"),
                    ImagePart(url="https://img.test/a.png"),
                    TextPart("@"),
                    TextPart("example.org please; card " + CARD),
                ),
            ),
        )
    )
    g = governor({"input": {"rules": [rule("e", "email", "mask"), rule("c", "payment_card", "redact")]}})
    actions: list[dict[str, Any]] = []
    edited = g.govern_input(body, actions)
    assert texts_of(edited) == [["mail [EMAIL_1]", "", " please; card [REDACTED]"]]
    assert isinstance(edited.messages[0].content[1], ImagePart)
    assert g.restore("[EMAIL_1]") == EMAIL
    assert [a["count"] for a in actions] == [1, 1]
    card = actions[1]["positions"][0]
    assert (card["field"], card["start"], card["end"]) == ("messages[0].content[3]", 25, 44)
    assert "end_field" not in card


def test_parts_of_different_messages_are_not_joined() -> None:
    """Each message is a turn of its own (the decision the README documents)."""
    body = ChatRequest(
        messages=(
            Message(Role.USER, (TextPart("4111 1111"),)),
            Message(Role.USER, (TextPart("1111 1111"),)),
        )
    )
    actions: list[dict[str, Any]] = []
    governor({"input": {"rules": [rule("c", "payment_card", "flag")]}}).govern_input(body, actions)
    assert actions == []


WORDS = ["pay ", CARD, " and ", EMAIL, "; ", "4111", " 1111", "x@", "example.org", "\u200b", "\n"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map("".join), st.data())
def test_parts_edit_as_their_joined_text_does(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=4)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    document = {"input": {"rules": [rule("e", "email", "mask"), rule("c", "payment_card", "redact")]}}
    whole_actions: list[dict[str, Any]] = []
    whole = governor(document).govern_input(parts(text), whole_actions)
    split_actions: list[dict[str, Any]] = []
    split = governor(document).govern_input(parts(*pieces), split_actions)
    assert "".join(texts_of(split)[0]) == texts_of(whole)[0][0]
    assert [a["count"] for a in split_actions] == [a["count"] for a in whole_actions]
