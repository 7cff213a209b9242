"""Findings of several output rules that overlap, in a stream: the earlier rule's action
stands as for the whole answer, so a streamed answer is the unary one (its text, its evidence
counts, and whether it is refused) however it is chunked."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane.errors import SignalboxError
from tests.dataplane.governance.test_enforce import answer, governor, rule, stream

# Each at most half the window long (a longer one is redacted from where the stream saw it,
# as it documents) and none can begin inside another of its own findings.
RULES = [
    rule("word", "terms", "redact", options={"terms": ["falcon"]}),
    rule("phrase", "regex", "redact", placeholder="[PHRASE]", options={"patterns": ["project falcon"]}),
    rule("tail", "regex", "redact", placeholder="[TAIL]", options={"patterns": ["falcon (?:is|was) on"]}),
    rule("note", "regex", "flag", options={"patterns": ["project [a-z]+"]}),
    rule("stop", "regex", "block", options={"patterns": ["falcon was"]}),
]
FRAGMENTS = ["project ", "falcon ", "is on ", "was on ", "word ", "x" * 9, "\n"]


def _outcome(g: Any, text: str) -> tuple[str, bool, list[tuple[str, int]]]:
    actions: list[dict[str, Any]] = []
    try:
        sent = g.govern_output(answer(text), actions).message.text
    except SignalboxError:
        return "", True, [(a["rule"], a["count"]) for a in actions]
    return sent, False, [(a["rule"], a["count"]) for a in actions]


@settings(max_examples=300, deadline=None)
@example(  # a block finding at the end of the text seen, which the text to come redacts
    "project project project project project project is on is on falcon was on ", [RULES[2], RULES[4]], 7
)
@given(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=20).map("".join),
    st.lists(st.sampled_from(RULES), min_size=2, max_size=4, unique_by=lambda r: r["name"]),
    st.integers(min_value=1, max_value=11),
)
def test_overlapping_findings_in_a_stream_are_read_as_in_the_whole_answer(
    text: str, rules: list[dict[str, Any]], size: int
) -> None:
    """A later block or flag rule acted on what an earlier redaction covered (a stream was
    refused that the whole answer was not, and counted findings the evidence of the whole
    answer does not), and a later redaction reaching past an earlier one took the earlier
    one's placeholder. A block finding at the end of the text seen refused the stream before
    the text that makes it an earlier redaction's came."""
    document = {"output": {"window": 64, "rules": rules}}
    unary, refused, counts = _outcome(governor(document), text)
    out, error, actions = stream(governor(document), [text[i : i + size] for i in range(0, len(text), size)])
    assert (error is not None) == refused
    if refused:
        # The stream ends at the scan that finds it, before recording what else that scan found.
        assert [(a["rule"], a["count"]) for a in actions if a["action"] == "block"] == [("stop", 1)]
        return
    assert sorted((a["rule"], a["count"]) for a in actions) == sorted(counts)
    assert "".join(out) == unary
