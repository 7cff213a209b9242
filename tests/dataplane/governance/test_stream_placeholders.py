"""A stream under output rules whose request masked values: the cut that holds back a partial
placeholder (``[EMAIL`` sent, ``_1]`` not) never splits what the rules found."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

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
