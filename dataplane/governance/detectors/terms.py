"""``terms``: a tenant's list of words and phrases, found with one Aho-Corasick automaton.

The automaton (``ahocorasick-rs``) is built once per snapshot and scans a text in one pass
whatever the number of terms; offsets are the ``str``'s. All matches are collected
(overlapping), those failing the whole-word rule are dropped, then the leftmost-longest of the
rest win, so ``"project falcon"`` and ``"falcon"`` both listed find the phrase once.

Options:

- ``terms`` (required): 1 to 10,000 strings of 1 to 200 characters;
- ``case_insensitive`` (default true): compared after lowercasing both sides;
- ``whole_words`` (default true): a match must not have a letter, digit or ``_`` right before
  or after it (a term that itself starts or ends with punctuation is matched as written there);
- ``kind`` (default ``"term"``): the label findings carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import ahocorasick_rs

from dataplane.governance.detect import DetectorConfigError, Span
from dataplane.governance.detectors._options import Options
from dataplane.governance.detectors._spans import leftmost_longest
from dataplane.governance.detectors._text import is_word_char, lower_in_place

MAX_TERMS: Final = 10_000
MAX_TERM_CHARS: Final = 200


class TermsDetector:
    name = "terms"

    def __init__(self, terms: list[str], *, case_insensitive: bool, whole_words: bool, kind: str) -> None:
        self._case_insensitive = case_insensitive
        self._whole_words = whole_words
        self._kind = kind
        if case_insensitive:
            terms = [lower_in_place(t) for t in terms]
        # Without the whole-word rule the automaton itself picks leftmost-longest and never
        # reports overlaps; with it, every match is needed to find the ones that are words,
        # at most one per term length ending at each position.
        kind_of_match = (
            ahocorasick_rs.MatchKind.Standard if whole_words else ahocorasick_rs.MatchKind.LeftmostLongest
        )
        self._automaton = ahocorasick_rs.AhoCorasick(sorted(set(terms)), matchkind=kind_of_match)

    def find(self, text: str) -> list[Span]:
        haystack = lower_in_place(text) if self._case_insensitive else text
        matches = self._automaton.find_matches_as_indexes(haystack, overlapping=self._whole_words)
        if not matches:
            return []
        kind = self._kind
        if self._whole_words:
            n = len(text)
            candidates = [
                Span(s, e, kind)
                for _, s, e in matches
                if (s == 0 or not (is_word_char(text[s - 1]) and is_word_char(text[s])))
                and (e == n or not (is_word_char(text[e]) and is_word_char(text[e - 1])))
            ]
            return leftmost_longest(candidates)
        return [Span(s, e, kind) for _, s, e in matches]


def build(options: Mapping[str, Any]) -> TermsDetector:
    """``terms``: see the module's docstring for the options."""
    opts = Options(options)
    terms = opts.strings("terms", max_items=MAX_TERMS, max_chars=MAX_TERM_CHARS)
    for i, term in enumerate(terms):
        if not term.strip():
            raise DetectorConfigError(f"options.terms[{i}]", "must not be blank")
    case_insensitive = opts.boolean("case_insensitive", True)
    whole_words = opts.boolean("whole_words", True)
    kind = opts.kind("term")
    opts.done()
    return TermsDetector(terms, case_insensitive=case_insensitive, whole_words=whole_words, kind=kind)
