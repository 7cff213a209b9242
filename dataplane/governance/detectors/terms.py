"""``terms``: a tenant's list of words and phrases, found with one Aho-Corasick automaton.

The automaton (``ahocorasick-rs``) is built once per snapshot and scans a text in one pass
whatever the number of terms; offsets are the ``str``'s. All matches are collected
(overlapping), those failing the whole-word rule are dropped, then the leftmost-longest of the
rest win, so ``"project falcon"`` and ``"falcon"`` both listed find the phrase once.

Collecting every match costs one match per term ending at each position: as many as the
list has terms that are suffixes of one another (``"a"``, ``"aa"``, ``"aaa"``... or
``"falcon"``, ``"project falcon"``). That nesting is measured when the detector is built
(``_nesting``); past ``MAX_NESTING`` the whole-word rule is put into the text instead: a mark
(a Unicode noncharacter no term holds) before and after every word of the text and of each
term, so that a term matches only where its words are whole words of the text, and the
automaton's own leftmost-longest search (at most one match per position, none overlapping)
finds exactly what the filter would have kept. Marking a text costs more than filtering a
few matches (a split and a join, ~10x the scan on prose), so a list that nests little keeps
the filter: either way the work is linear in the text with a small constant, whatever the
list and the text (a list whose terms hold every noncharacter, which no text needs, keeps
the filter).

Options:

- ``terms`` (required): 1 to 10,000 strings of 1 to 200 characters;
- ``case_insensitive`` (default true): compared after lowercasing both sides;
- ``whole_words`` (default true): a match must not have a letter, digit or ``_`` right before
  or after it (a term that itself starts or ends with punctuation is matched as written there);
- ``kind`` (default ``"term"``): the label findings carry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import ahocorasick_rs

from dataplane.governance.detect import DetectorConfigError, Span
from dataplane.governance.detectors._options import Options
from dataplane.governance.detectors._spans import leftmost_longest
from dataplane.governance.detectors._text import is_word_char, lower_in_place

MAX_TERMS: Final = 10_000
MAX_TERM_CHARS: Final = 200
MAX_NESTING: Final = 2
"""The most terms of a list that may be suffixes of one another (beyond the term itself) for the
whole-word rule to be applied as a filter over every match (at most ``MAX_NESTING + 1`` matches
per position); a list nesting deeper is matched on marked text (see the module's docstring)."""
_NONCHARACTERS: Final = [chr(c) for c in range(0xFDD0, 0xFDF0)]
"""Unicode noncharacters (never meant for text), none of them a word character: a list's mark
and its stand-in are two its terms do not hold."""
_WORDS: Final = re.compile(r"(\w+)")
r"""A word: ``is_word_char`` characters (``\w`` is the same test: alphanumeric or ``_``)."""


def _marked(text: str, mark: str, stand_in: str) -> str:
    """``text`` with ``mark`` before and after each word (one split, one join, in C). A mark
    the text itself holds is read as ``stand_in``: no term holds either, so neither can be
    part of a match, and neither is a word character."""
    if mark in text:
        text = text.replace(mark, stand_in)
    return mark.join(_WORDS.split(text))


def _nesting(terms: list[str]) -> int:
    """The most terms that are proper suffixes of one term of ``terms`` (distinct): how many
    more matches than one a position can end."""
    known = set(terms)
    lengths = sorted({len(t) for t in known})
    deepest = 0
    for term in known:
        n = len(term)
        nested = 0
        for k in lengths:
            if k >= n:
                break
            if term[n - k :] in known:
                nested += 1
        deepest = max(deepest, nested)
    return deepest


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
        unique = sorted(set(terms))
        held = set("".join(unique))
        free = [c for c in _NONCHARACTERS if c not in held][:2]
        self._mark, self._stand_in = free if len(free) == 2 else ("", "")
        self._marks = whole_words and len(free) == 2 and _nesting(unique) > MAX_NESTING
        """The whole-word rule is in the text (marked) rather than a filter over every match."""
        if self._marks:
            unique = sorted({_marked(t, self._mark, self._stand_in) for t in unique})
        kind_of_match = (
            ahocorasick_rs.MatchKind.Standard
            if whole_words and not self._marks
            else ahocorasick_rs.MatchKind.LeftmostLongest
        )
        self._automaton = ahocorasick_rs.AhoCorasick(unique, matchkind=kind_of_match)

    def find(self, text: str) -> list[Span]:
        if self._marks:
            return self._find_marked(text)
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

    def _find_marked(self, text: str) -> list[Span]:
        """Whole words on the marked text: each match, leftmost-longest, is a finding; its
        offsets less the marks before them are the text's."""
        mark = self._mark
        marked = _marked(text, mark, self._stand_in)
        haystack = lower_in_place(marked) if self._case_insensitive else marked
        kind = self._kind
        spans: list[Span] = []
        at = 0  # offset in the marked text up to which marks are counted
        marks = 0  # marks before ``at``
        for _, s, e in self._automaton.find_matches_as_indexes(haystack):
            marks += marked.count(mark, at, s)
            inside = marked.count(mark, s, e)
            spans.append(Span(s - marks, e - marks - inside, kind))
            marks += inside
            at = e
        return spans


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
