"""Where a text's numbers are: the one scan the digit-based detectors share.

Cards, IBANs, phone numbers, national identifiers and IP addresses all contain digits, and
most of a prompt has none. Scanning the whole text with each detector's own pattern costs
Python's regular-expression engine ~100 us per 4 KB per pattern (its lookbehinds run at
every position); finding the clusters of digits once (one simple pattern whose first
character is a digit, which the engine skips to quickly) and running each detector's pattern
only in a window around them costs a fraction of that.

A cluster is an ASCII digit followed by digits and number punctuation (the checksums and
libraries behind these detectors read ASCII digits; their patterns are compiled ASCII-only). A window is a cluster with
``MARGIN`` characters on both sides (the letters of an IBAN's country code, a codice
fiscale's name letters, an IPv6 address's hex digits), overlapping windows merged. Every
finding of those detectors holds a digit and reaches at most ``MARGIN`` characters past its
digits, so a window holds it whole, and a pattern's lookbehind still sees the text before
a window (``Pattern.finditer(text, pos, endpos)``).

The clusters of the last few texts asked about are kept (``MEMO`` entries, the text itself as
the key by identity): the detectors of one profile look at the same texts one after another,
and a request holds several texts (system prompt, user messages, tool results), which a rule
visits in turn before the next rule does. That is an optimisation only: the answer is the
same function of the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

MARGIN: Final = 24
_CLUSTER: Final = re.compile(r"[0-9][0-9 \u00a0.,:/()+\-]*+")
PUNCTUATION: Final = " \u00a0.,:/()+-".encode()
"""A cluster's characters besides its digits, UTF-8 encoded: ``bytes.translate`` deletes them
faster than ``str.translate`` (a cluster holds no other non-ASCII character)."""
_DIGITS: Final = "0123456789"

MEMO: Final = 8
_memo: list[tuple[str, list[tuple[int, int, int]]]] = []


def clusters(text: str) -> list[tuple[int, int, int]]:
    """``(start, end, digits)`` of every cluster of digits in ``text``: where it is and how
    many digits it holds."""
    for known, found in _memo:
        if known is text:
            return found
    found = []
    # Looking for each digit (a C loop per digit) is ten times faster than the pattern's
    # scan for its first character: most texts have no digit at all, or only late.
    first = min((at for at in map(text.find, _DIGITS) if at >= 0), default=-1)
    if first >= 0:
        for match in _CLUSTER.finditer(text, first):
            start, end = match.span()
            # Most clusters in prose are one digit (a count, a list item): nothing to count.
            count = 1 if end - start == 1 else len(text[start:end].encode().translate(None, PUNCTUATION))
            found.append((start, end, count))
    if len(_memo) >= MEMO:
        del _memo[0]
    _memo.append((text, found))
    return found


def runs(text: str, min_digits: int, before: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` of each cluster holding at least ``min_digits`` digits, with up to
    ``before`` characters before it (a ``+`` or ``(`` that opens a number) that are not in
    the cluster before it.

    A candidate made only of cluster characters (and such an opening) lies within one of
    these ranges, and since a character that is in no cluster separates two clusters, a
    pattern matching only those characters finds in a range exactly what it would find
    there scanning the whole text: a detector whose findings are such candidates needs no
    more (a lookbehind still sees the text before the range).
    """
    out: list[tuple[int, int]] = []
    previous = 0
    for start, end, count in clusters(text):
        if count >= min_digits:
            out.append((max(start - before, previous), end))
        previous = end
    return out


def windows(
    text: str, min_digits: int, also: Callable[[str, int, int], bool] | None = None
) -> list[tuple[int, int]]:
    """Merged ``(start, end)`` windows around the clusters holding at least ``min_digits``
    (or for which ``also(text, start, end)`` holds)."""
    merged: list[tuple[int, int]] = []
    n = len(text)
    for start, end, count in clusters(text):
        if count < min_digits and not (also is not None and also(text, start, end)):
            continue
        low, high = max(0, start - MARGIN), min(n, end + MARGIN)
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged
