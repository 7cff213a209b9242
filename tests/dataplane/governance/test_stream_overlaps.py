"""Findings of several output rules that overlap, in a stream: the earlier rule's action
stands as for the whole answer, so a streamed answer is the unary one (its text, its evidence
counts and positions, whether it is refused and for which rule) however it is chunked."""

from __future__ import annotations

from typing import Any

import pytest
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
    rule("halt", "terms", "block", options={"terms": ["word"]}),
]
FRAGMENTS = ["project ", "falcon ", "is on ", "was on ", "word ", "x" * 9, "\n"]

Evidence = list[tuple[str, int, list[tuple[str, int, int, str]]]]


def evidence(actions: list[dict[str, Any]]) -> Evidence:
    """Each entry's rule, count and positions (field, offsets, kind), in rule order."""
    return sorted(
        (a["rule"], a["count"], [(p["field"], p["start"], p["end"], p["kind"]) for p in a["positions"]])
        for a in actions
    )


def _outcome(g: Any, text: str) -> tuple[str, str | None, Evidence]:
    """What is sent, the block rule refusing it (None: not refused) and the evidence."""
    actions: list[dict[str, Any]] = []
    try:
        sent = g.govern_output(answer(text), actions).message.text
    except SignalboxError as refusal:
        return "", refusal.rule, evidence(actions)  # type: ignore[attr-defined]
    return sent, None, evidence(actions)


def _as_the_whole_answer(text: str, rules: list[dict[str, Any]], size: int) -> None:
    document = {"output": {"window": 64, "rules": rules}}
    unary, refused, whole = _outcome(governor(document), text)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    out, error, actions = stream(governor(document), pieces)
    assert (error is not None) == (refused is not None)
    if error is not None:
        # The stream ends at the chunk whose scan finds the block (len(out) chunks went
        # before it), refused for the rule the whole answer it had read is (an earlier rule's
        # block finding further on, in text not come yet, cannot name it): its evidence is
        # that answer's, for the rules up to the block rule. A rule after it may have
        # findings in text sent before the refusal (a whole answer is refused before that
        # rule runs).
        _, read_refused, read = _outcome(governor(document), "".join(pieces[: len(out) + 1]))
        assert error.rule == read_refused  # type: ignore[attr-defined]
        names = [r["name"] for r in rules]
        later = names[names.index(read_refused) + 1 :]
        assert [e for e in evidence(actions) if e[0] not in later] == read
        return
    assert evidence(actions) == whole
    assert "".join(out) == unary


TEXTS = st.lists(st.sampled_from(FRAGMENTS), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@example(  # a block finding at the end of the text seen, which the text to come redacts
    "project project project project project project is on is on falcon was on ", [RULES[2], RULES[4]], 7
)
@example(  # the earlier block rule's finding waits at the end of the text seen, the later's is certain
    "word " + "x" * 45 + "falcon was on " + "x" * 27, [RULES[4], RULES[5]], 11
)
@given(
    TEXTS.filter(bool),
    st.lists(st.sampled_from(RULES), min_size=2, max_size=4, unique_by=lambda r: r["name"]),
    st.integers(min_value=1, max_value=11),
)
def test_overlapping_findings_in_a_stream_are_read_as_in_the_whole_answer(
    text: str, rules: list[dict[str, Any]], size: int
) -> None:
    """A later block or flag rule acted on what an earlier redaction covered (a stream was
    refused that the whole answer was not, and counted findings the evidence of the whole
    answer does not), and a later redaction reaching beyond an earlier one took the earlier
    one's placeholder. A block finding at the end of the text seen refused the stream before
    the text that makes it an earlier redaction's came. With two block rules, a later rule's
    finding certain while the earlier rule's waited at the end of the text seen refused the
    stream naming the later rule, where the whole answer (also the part read) names the
    earlier."""
    _as_the_whole_answer(text, rules, size)


@settings(max_examples=300, deadline=None)
@example("is on falcon ", "xxxxxxxxxfalcon was on \nis on word xxxxxxxxxfalcon was on ", [RULES[3]], 0, 3)
@example("word falcon project xxxxxxxxx", "x" * 50, [RULES[0], RULES[3]], 2, 4)
@given(
    TEXTS,
    TEXTS,
    st.lists(st.sampled_from(RULES[:4]), min_size=1, max_size=3, unique_by=lambda r: r["name"]),
    st.integers(min_value=0, max_value=3),
    st.integers(min_value=1, max_value=11),
)
def test_a_refused_stream_records_what_the_refused_whole_answer_does(
    before: str, after: str, others: list[dict[str, Any]], at: int, size: int
) -> None:
    """A refused stream recorded only the block rule's first finding and none of what the
    rules before it found in the same scan (held back, never sent), where a refused whole
    answer records them all: a regulated caller's evidence must say all the scan found."""
    rules = [*others[:at], RULES[4], *others[at:]]
    _as_the_whole_answer(f"{before}falcon was on {after}", rules, size)


@pytest.mark.parametrize("size", range(1, 12))
def test_no_part_of_a_later_block_rules_finding_is_sent_while_an_earlier_one_waits(size: int) -> None:
    """Two block findings waiting at the end of the text seen ("word" less than window // 2
    before it, and after it "falcon was" of the earlier rule): the cut stayed before the
    earlier rule's finding only, and went out inside the later rule's ("wor")."""
    text = "x" * 30 + " word " + "x" * 14 + "falcon was on " + "x" * 27
    document = {"output": {"window": 64, "rules": [RULES[4], RULES[5]]}}
    out, error, _ = stream(governor(document), [text[i : i + size] for i in range(0, len(text), size)])
    assert error is not None
    assert error.rule == _outcome(governor(document), text)[1] == "stop"  # type: ignore[attr-defined]
    assert set("".join(out)) <= {"x", " "}
