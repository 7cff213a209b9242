"""Work linear in the text, whatever the text: the detectors, the term matcher and masking on
hostile input (one short unit repeated), which runs on the node's event loop.

Linear is measured, not timed against a clock: each case costs the thread's CPU time (best of
three, so a busy machine's waits and hiccups are left out) on ``n`` characters and on ``16 n``,
and 16 n may cost at most ``RATIO`` times n (linear work gives ~16, quadratic ~256: a factor
of four apart either way, so a loaded machine's noise or a cache cannot decide it). Where the
defect was a factor the list brings, not the text (a term list nesting 200 deep), the same
text is timed with a shallow list instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.chat import ChatRequest, Message, Role, TextPart
from dataplane.governance import detect
from dataplane.governance.contract import Contracts
from dataplane.governance.detect import Span
from dataplane.governance.detectors._text import is_word_char, lower_in_place
from dataplane.governance.enforce import RequestGovernor
from dataplane.governance.profile import compile_profile

SCALE = 16
"""The larger text is this many times the smaller."""
RATIO = 64.0
"""The most ``SCALE`` n characters may cost against n: linear is ~16, quadratic ~256."""
SHALLOW_RATIO = 8.0
"""The most a deeply nested term list may cost against a shallow one on the same text."""
NESTED = ["a" * i for i in range(1, 201)]
NESTED_PHRASES = [" ".join("a" * i) for i in range(1, 101)]


def cpu(run: Callable[[str], object], make: Callable[[], str]) -> float:
    """The least CPU time of three runs, each on a new text (nothing cached for it)."""
    best = math.inf
    for _ in range(3):
        text = make()
        start = time.thread_time()
        run(text)
        best = min(best, time.thread_time() - start)
    return best


def growth(run: Callable[[str], object], unit: str, n: int) -> float:
    """What ``SCALE n`` characters of ``unit`` repeated cost against ``n`` of them."""
    small = cpu(run, lambda: unit * (n // len(unit)))
    large = cpu(run, lambda: unit * (SCALE * n // len(unit)))
    return large / max(small, 1e-6)


HOSTILE: list[tuple[str, str, int]] = [
    ("phone", "1:", 32_768),
    ("phone", "+1 ", 32_768),
    ("phone", "(1)", 32_768),
    ("email", "@a", 32_768),
    ("email", "a.@", 32_768),
    ("email", "a@a.", 32_768),
    ("payment_card", "1234 ", 32_768),
    ("payment_card", "1,", 32_768),
    ("iban", "DE89 ", 32_768),
    ("iban", "ab12", 32_768),
    ("national_id", "bsn 123456782 ", 32_768),
    ("national_id", "abcdef12", 32_768),
    ("ip_address", "a:1", 32_768),
    ("ip_address", "1.", 32_768),
    ("ip_address", "::1", 32_768),
    ("credential", "sk-", 32_768),
    ("credential", "eyJa.", 32_768),
    # Below the 16 KiB an END line was looked for after each BEGIN line: that search was
    # repeated for every BEGIN line, quadratic up to its bound.
    ("credential", "-----BEGIN PRIVATE KEY-----.", 4_096),
    # A key's body was read to the end of its characters even when its END line closed it:
    # to the end of the text here, for every key.
    ("credential", "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n", 16_384),
]


@pytest.mark.parametrize(("name", "unit", "n"), HOSTILE, ids=[f"{d}-{u[:12]!r}" for d, u, _ in HOSTILE])
def test_a_detector_works_linearly_on_a_repeated_unit(name: str, unit: str, n: int) -> None:
    detector = detect.build(name)
    assert growth(detector.find, unit, n) <= RATIO


def test_pem_keys_one_after_another_are_each_found_to_their_end_line() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"
    text = f"{key}\n.{key}. -----BEGIN PRIVATE KEY-----\nMIIE."
    found = detect.build("credential").find(text)
    assert [text[s.start : s.end] for s in found] == [key, key, "-----BEGIN PRIVATE KEY-----\nMIIE"]


@pytest.mark.parametrize(("unit", "nested"), [("a", NESTED), ("a ", NESTED_PHRASES)])
def test_a_deeply_nested_term_list_costs_no_more_than_a_shallow_one(unit: str, nested: list[str]) -> None:
    """Collecting every match cost one per nested term at each position: 200 nested terms on a
    run of ``a`` were 70 times the cost of three."""
    deep = detect.build("terms", {"terms": nested})
    shallow = detect.build("terms", {"terms": nested[:3]})
    n = 16_384
    text = unit * (n // len(unit))
    assert cpu(deep.find, lambda: text + "") <= SHALLOW_RATIO * max(
        cpu(shallow.find, lambda: text + ""), 1e-3
    )
    assert growth(deep.find, unit, n) <= RATIO


def test_a_nested_term_list_finds_whole_words_leftmost_longest() -> None:
    detector = detect.build("terms", {"terms": NESTED, "kind": "a"})
    assert detector.find("a" * 300) == []  # one word of 300 letters: no term is all of it
    assert detector.find("aaa aa-a, aaaab") == [Span(0, 3, "a"), Span(4, 6, "a"), Span(7, 8, "a")]
    phrases = detect.build("terms", {"terms": NESTED_PHRASES, "kind": "p"})
    text = " ".join("a" * 150)
    assert phrases.find(text) == [Span(0, 199, "p"), Span(200, 299, "p")]


def whole_words(term_list: list[str], text: str, case_insensitive: bool) -> list[Span]:
    """The module's docstring as a brute force: every whole-word occurrence, leftmost-longest."""
    fold = lower_in_place if case_insensitive else (lambda s: s)
    haystack = fold(text)
    needles = {fold(t) for t in term_list}
    word = is_word_char
    chosen: list[Span] = []
    s = 0
    while s < len(text):
        ends = [
            s + len(t)
            for t in needles
            if haystack.startswith(t, s)
            and (s == 0 or not (word(text[s - 1]) and word(text[s])))
            and (s + len(t) == len(text) or not (word(text[s + len(t)]) and word(text[s + len(t) - 1])))
        ]
        if ends:
            chosen.append(Span(s, max(ends), "t"))
            s = max(ends)
        else:
            s += 1
    return chosen


ALPHABET = st.sampled_from(["a", "b", "A", " ", "-", "_", ".", "1", "é", "İ", "ß", "\ufdd0", "\ufffd"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(ALPHABET, min_size=1, max_size=5).map("".join), min_size=1, max_size=8),
    st.lists(ALPHABET, max_size=40).map("".join),
    st.booleans(),
)
def test_terms_find_what_the_whole_word_rule_says_nested_or_not(
    listed: list[str], text: str, case_insensitive: bool
) -> None:
    listed = [t for t in listed if t.strip()] or ["a"]
    options: dict[str, Any] = {"terms": listed, "case_insensitive": case_insensitive, "kind": "t"}
    expected = whole_words(listed, text, case_insensitive)
    assert detect.build("terms", options).find(text) == expected
    # The same list made to nest deeper than the filter takes: found on marked text.
    deep = [*listed, "zz", "zzz", "zzzz", "zzzzz"]
    assert detect.build("terms", {**options, "terms": deep}).find(text) == expected


def test_masking_many_distinct_values_costs_linear_time() -> None:
    """Numbering a new masked value counted every value masked before it: quadratic."""

    def mask(text: str) -> None:
        g = RequestGovernor(
            compile_profile(
                {"input": {"rules": [{"name": "m", "detector": "email", "action": "mask"}]}},
                version=1,
                profile_id="gp",
            ),
            Contracts(),
        )
        body = g.govern_input(ChatRequest(messages=(Message(Role.USER, (TextPart(text),)),)), [])
        assert isinstance(body, ChatRequest)
        assert body.messages[0].text.endswith(f"[EMAIL_{text.count('@')}] ")

    def emails(k: int) -> Callable[[], str]:
        return lambda: "".join(f"u{i}@x.io " for i in range(k))

    k = 2_000
    small = cpu(mask, emails(k))
    assert cpu(mask, emails(SCALE * k)) <= RATIO * small
