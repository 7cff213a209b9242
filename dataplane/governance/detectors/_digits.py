"""Where a text's numbers are: the one scan the digit-based detectors share.

Cards, IBANs, phone numbers, national identifiers and IP addresses all contain digits, and
most of a prompt has none. Scanning the whole text with each detector's own pattern costs
Python's regular-expression engine ~100 us per 4 KB per pattern (its lookbehinds run at
every position); finding the clusters of digits once (one simple pattern whose first
character is a digit, which the engine skips to quickly) and running each detector's pattern
only in a window around them costs a fraction of that.

For a Latin-1 text (most prompts) the scan runs over the text's character classes instead
(``_CLASSES``: one ``bytes.translate``), where a cluster starts with a literal byte the
engine skips to; other texts use ``_CLUSTER`` itself.

A cluster is an ASCII digit followed by digits and number punctuation (the checksums and
libraries behind these detectors read ASCII digits; their patterns are compiled ASCII-only). A window is a cluster with
``MARGIN`` characters on both sides (the letters of an IBAN's country code, a codice
fiscale's name letters, an IPv6 address's hex digits), overlapping windows merged. Every
finding of those detectors holds a digit and reaches at most ``MARGIN`` characters past its
digits, so a window holds it whole, and a pattern's lookbehind still sees the text before
a window (``Pattern.finditer(text, pos, endpos)``).

Within a governance step (``share`` ... ``forget``, which ``enforce`` and ``stream`` call
around their rules) the clusters of the last few texts asked about are kept (``MEMO``
entries, the text itself as the key by identity): the detectors of one profile look at the
same texts one after another, and a request holds several texts (system prompt, user
messages, tool results), which a rule visits in turn before the next rule does. That is an
optimisation only: the answer is the same function of the text. The memo is the calling
thread's own (``threading.local``: detectors may run in threads, and one thread's texts never
evict or meet another's) and is dropped when the step ends, so no text outlives its request
here; outside a step every call scans for itself.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Final

MARGIN: Final = 24
_CLUSTER: Final = re.compile(r"[0-9][0-9 \u00a0.,:/()+\-]*+")
_PUNCTUATION: Final = " \u00a0.,:/()+-"
PUNCTUATION: Final = _PUNCTUATION.encode()
"""A cluster's characters besides its digits, UTF-8 encoded: ``bytes.translate`` deletes them
faster than ``str.translate`` (a cluster holds no other non-ASCII character)."""
_DIGITS: Final = "0123456789"

FIND_FIRST: Final = 1024
"""From this length on, the first digit is looked for with ``str.find`` (ten calls, ~2 us)
before the pattern scans (~5 ns a character)."""

DIGIT: Final = 0x30
NUMBER_PUNCTUATION: Final = 0x2E
OTHER: Final = 0x20
_CLASSES: Final = bytes(
    DIGIT if chr(b) in _DIGITS else NUMBER_PUNCTUATION if chr(b) in _PUNCTUATION else OTHER
    for b in range(256)
)
"""A Latin-1 character's class: ``DIGIT`` (``0``), ``NUMBER_PUNCTUATION`` (``.``) or ``OTHER``
(a space: letters among them)."""
_CLUSTER_CLASSES: Final = re.compile(rb"0[0.]*+")
"""``_CLUSTER`` over the classes: a pattern starting with a literal, which the engine finds
with a plain byte loop instead of testing a character set at every position."""

MEMO: Final = 8
_Entry = tuple[str, list[tuple[int, int]], list[int], bytes | None]
"""(text, its clusters, their digit counts (-1: not counted yet), the text's character
classes if it is Latin-1)."""
_local: Final = threading.local()
"""``entries``: this thread's memo (``list[_Entry]``, newest last) during a step, else None."""


def share() -> None:
    """Until ``forget``, this thread keeps the scans of the last ``MEMO`` texts for the
    detectors that look at them next (a governance step's rules over its texts)."""
    _local.entries = []


def forget() -> None:
    """Drop this thread's memo (and with it every reference to the step's texts)."""
    _local.entries = None


def _scan(text: str) -> tuple[list[tuple[int, int]], list[int], bytes | None]:
    memo: list[_Entry] | None = getattr(_local, "entries", None)
    if memo is not None:
        for entry in memo:
            if entry[0] is text:
                return entry[1], entry[2], entry[3]
    # A text of Latin-1 characters (most prompts) is stored one byte a character, so
    # encoding it is a copy and its offsets are the text's: classify every character with
    # one table lookup (bytes.translate) and find the clusters in that.
    latin: bytes | None
    try:
        latin = text.encode("latin-1")
    except UnicodeEncodeError:
        latin = None
    classes = latin.translate(_CLASSES) if latin is not None else None
    if classes is not None:
        found = [match.span() for match in _CLUSTER_CLASSES.finditer(classes)]
    else:
        first = 0
        if len(text) > FIND_FIRST:
            # Looking for each digit (a C loop per digit) is ten times faster than the
            # pattern's scan for its first character: most long texts have no digit, or
            # only late.
            first = min((at for at in map(text.find, _DIGITS) if at >= 0), default=-1)
        found = [match.span() for match in _CLUSTER.finditer(text, first)] if first >= 0 else []
    counts = [-1] * len(found)
    if memo is not None:
        if len(memo) >= MEMO:
            del memo[0]
        memo.append((text, found, counts, classes))
    return found, counts, classes


def clusters(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every cluster of digits in ``text``."""
    return _scan(text)[0]


def clusters_and_classes(text: str) -> tuple[list[tuple[int, int]], bytes | None]:
    """``clusters(text)``, and the class of each of its characters if it is Latin-1: ``0``
    a digit, ``.`` number punctuation, a space anything else (a letter among them)."""
    found, _, classes = _scan(text)
    return found, classes


def _count(text: str, counts: list[int], classes: bytes | None, i: int, start: int, end: int) -> int:
    """The digits of cluster ``i``: counted once per text, whichever detector asks first."""
    count = counts[i]
    if count < 0:
        if classes is not None:
            count = classes.count(b"0", start, end)
        else:
            count = len(text[start:end].encode().translate(None, PUNCTUATION))
        counts[i] = count
    return count


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
    found, counts, classes = _scan(text)
    for i, (start, end) in enumerate(found):
        # Most clusters in prose are shorter than that (a year, a count): not counted.
        if end - start >= min_digits and _count(text, counts, classes, i, start, end) >= min_digits:
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
    found, counts, classes = _scan(text)
    for i, (start, end) in enumerate(found):
        enough = end - start >= min_digits and _count(text, counts, classes, i, start, end) >= min_digits
        if not enough and not (also is not None and also(text, start, end)):
            continue
        low, high = max(0, start - MARGIN), min(n, end + MARGIN)
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged
