"""Every built-in detector, on arbitrary text: never raises, spans valid, same answer twice.

The text is generated from fragments that look like findings (digits with separators, ``@``,
``::``, ``eyJ``, key prefixes, PEM lines) mixed with arbitrary Unicode, so the detectors'
candidate paths are exercised, not only their pre-filters.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.governance import detect
from dataplane.governance.detectors import BUILT_IN
from tests.dataplane.governance.corpus import make_corpus

OPTIONS: dict[str, dict[str, Any]] = {
    "regex": {"patterns": ["[0-9]+(?:-[0-9]+)*", "a+b?", "(x+x+)+y"], "case_insensitive": True},
    "terms": {"terms": ["falcon", "Project Falcon", "İstanbul", "ß", "a", "aa", "aaa"]},
}
FRAGMENTS = [
    "@",
    ".",
    "-",
    " ",
    "::",
    ":",
    "+",
    "(",
    ")",
    "/",
    "\n",
    "0",
    "00",
    "4111",
    "1111",
    "DE89",
    "3704",
    "eyJ",
    "eyJhbGciOiJIUzI1NiJ9",
    "sk-",
    "sk-ant-",
    "AKIA",
    "ghp_",
    "sbx_",
    "xoxb-",
    "AIza",
    "-----BEGIN PRIVATE KEY-----",
    "-----END PRIVATE KEY-----",
    "jane@example.com",
    "192.168.",
    "fe80",
    "+49 30 ",
    "BSN ",
    "SSN ",
    "X",
    "Z",
    "İ",
    "ß",
    "\u00a0",
    "é",
    "\U0001f600",
    "a",
    "b",
]
TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from(FRAGMENTS), st.text(alphabet="0123456789 -.", max_size=24), st.text(max_size=8)
        ),
        max_size=60,
    ).map("".join),
)
DETECTORS = {name: detect.build(name, OPTIONS.get(name)) for name in BUILT_IN}
PROPERTY = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _check(name: str, text: str) -> None:
    spans = DETECTORS[name].find(text)
    end = 0
    for span in spans:
        assert end <= span.start < span.end <= len(text), (name, spans)
        assert 0 < len(span.kind) <= 64, name
        assert span.kind != text[span.start : span.end], name
        end = span.end
    assert DETECTORS[name].find(text) == spans
    # An equal text that is another object (the digit clusters are kept per text object).
    assert DETECTORS[name].find((text + "x")[:-1]) == spans


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_spans_are_sorted_disjoint_in_bounds_and_deterministic(name: str) -> None:
    @PROPERTY
    @given(TEXT)
    def check(text: str) -> None:
        _check(name, text)

    check()


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_corpus_samples_glued_together_keep_the_contract(name: str) -> None:
    samples = make_corpus.render(name)

    @PROPERTY
    @given(
        st.lists(st.sampled_from(samples.splitlines()), min_size=1, max_size=8),
        st.sampled_from(["", " ", "\n"]),
    )
    def check(lines: list[str], glue: str) -> None:
        _check(name, glue.join(lines))

    check()


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_long_hostile_runs_finish(name: str) -> None:
    # Shapes that make backtracking patterns slow: long runs of candidate characters that
    # almost match. No timing assertion: the test suite's timeout is the bound.
    for text in [
        "1 " * 20_000,
        "1-" * 20_000,
        "a@" * 20_000,
        "a." * 20_000 + "@",
        "x" * 30_000 + "@" + "a." * 5_000,
        "eyJ-" * 10_000,
        "sk-" * 10_000,
        ":1" * 20_000,
        "(0)" * 10_000,
        "DE89 " * 8_000,
        "a" * 40_000,
    ]:
        _check(name, text)
