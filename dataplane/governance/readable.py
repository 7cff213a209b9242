"""A text as a reader sees it, for the detectors: what hides a value from a pattern but not
from a model is taken out.

A caller (or a model asked to) can write a card number, an IBAN or a key so that no
pattern over its characters matches while every reader still sees the value:

- invisible format characters between its characters (zero-width space and joiners, word
  joiner, soft hyphen, bidirectional marks, byte order mark), and combining marks on a digit
  (``4`` with an acute accent or a keycap is still a ``4`` to a reader): removed;
- fullwidth forms (U+FF01 to U+FF5E: digits, letters, ``@``, ``.``) and the digits of other
  scripts (Arabic-Indic, Devanagari, ...): read as their ASCII characters;
- unusual spaces and dashes (no-break, thin, ideographic; hyphen, non-breaking hyphen, en
  dash, minus sign): read as a space and a hyphen-minus.

``readable`` gives the text detectors run on and a way back to the text's own offsets, so a
finding's span covers the value as written (the hidden characters with it), and edits apply
to the text itself. An ASCII text (most prompts) is its own view, at the cost of one check.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from dataplane.config.model import Finding
from dataplane.governance.detect import Span

_INVISIBLE: Final = re.compile(
    "[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]+"
    "|(?<=[0-9])[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
    "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+"
)
_SPACES: Final = (
    "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)
_DASHES: Final = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63"


def _build_table() -> dict[int, str]:
    """Every character read as another one, one for one (~20 ms: a look at 130,000 code points)."""
    table = {0xFF01 + i: chr(0x21 + i) for i in range(0x5E)}  # fullwidth ASCII
    table.update({ord(c): " " for c in _SPACES})
    table.update({ord(c): "-" for c in _DASHES})
    for code in range(0x80, 0x20000):
        c = chr(code)
        if unicodedata.category(c) == "Nd":
            table[code] = str(unicodedata.decimal(c))
    return table


_TABLE: Final = _build_table()
"""Built when the module is imported, which the node does when it starts (``dataplane.app``
imports the governance step): built on the first non-ASCII text instead, it cost that
request ~20 ms, once per worker process."""


class View:
    """A text as read, and the way back to the text's offsets."""

    __slots__ = ("_at", "_removed", "text")

    def __init__(self, text: str, at: list[int], removed: list[int]) -> None:
        self.text = text
        self._at = at
        """View offsets from which characters were removed before ..."""
        self._removed = removed
        """... this many characters in all."""

    def spans(self, spans: Sequence[Finding]) -> list[Finding]:
        """``spans`` of the view (sorted, not overlapping) as spans of the text: each covers
        its first character there to the next one's (what was removed inside it or right
        after it with it: a JSON escape whole). One walk over both."""
        at = self._at
        if not at:
            return list(spans)
        removed = self._removed
        m = len(at)
        k = -1  # the last removal at or before the offset looked at
        out: list[Finding] = []
        for s in spans:
            first, after = s.start, s.end
            if k >= 0 and at[k] > first:
                k = -1  # not sorted after all: walk again from the first removal
            while k + 1 < m and at[k + 1] <= first:
                k += 1
            start = first + (removed[k] if k >= 0 else 0)
            while k + 1 < m and at[k + 1] <= after:
                k += 1
            out.append(Span(start, after + (removed[k] if k >= 0 else 0), s.kind))
        return out


def _view(text: str, edits: Iterable[tuple[int, int, str]]) -> View:
    """``text`` with each ``(start, end, reading)`` (sorted, disjoint; a reading of at most
    one character) read as its reading: what is left out is removed after the reading."""
    at: list[int] = []
    removed: list[int] = []
    parts: list[str] = []
    previous = 0
    total = 0
    for start, end, reading in edits:
        parts += (text[previous:start], reading)
        at.append(start + len(reading) - total)
        total += end - start - len(reading)
        removed.append(total)
        previous = end
    if not at:
        return View(text, [], [])
    parts.append(text[previous:])
    return View("".join(parts), at, removed)


def readable(text: str) -> View:
    """``text`` as detectors read it (see the module's docstring)."""
    if text.isascii():
        return View(text, [], [])
    folded = text.translate(_TABLE)
    return _view(folded, ((match.start(), match.end(), "") for match in _INVISIBLE.finditer(folded)))


_ESCAPE: Final = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
"""A JSON string escape; a pair of backslashes is one escape, so ``\\\\u0040`` is not ``@``."""


def decoded(escape: re.Match[str]) -> str | None:
    """What a JSON escape stands for when JSON does not need it (None: it does)."""
    what = escape.group(1)
    if what == "/":
        return "/"
    if len(what) == 5:
        c = chr(int(what[1:], 16))
        if c >= " " and c not in '"\\' and not 0xD800 <= ord(c) <= 0xDFFF:
            return c
    return None


def _decoding(
    text: str, marker: str, pattern: re.Pattern[str], decode: Callable[[re.Match[str]], str | None]
) -> View:
    """``text`` with each match of ``pattern`` (which starts with ``marker``) read as what
    ``decode`` makes of it (None: as written)."""
    if marker not in text:
        return View(text, [], [])
    return _view(
        text,
        (
            (match.start(), match.end(), c)
            for match in pattern.finditer(text)
            if (c := decode(match)) is not None
        ),
    )


def unescaped(text: str) -> View:
    """JSON text (streamed tool call arguments: possibly a part of it) with every escape it
    does not need decoded, as a model reads it: each such escape read as its character."""
    return _decoding(text, "\\", _ESCAPE, decoded)


_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")


def _printable(escape: re.Match[str]) -> str | None:
    c = chr(int(escape.group(1), 16))
    return c if "!" <= c <= "~" else None


def percent_decoded(url: str) -> View:
    """A URL with each percent-encoded printable ASCII character (``%40``) read as itself, as
    the server it names reads it."""
    return _decoding(url, "%", _PERCENT, _printable)


def reading(text: str, url: bool = False) -> tuple[View, View | None]:
    """``text`` as rules read it, for ``find``: its JSON escapes that JSON does not need decoded
    (a model reads ``jane\\u0040example.com`` in a tool result, in a JSON document or not, as
    the address), then ``readable``. A text without a backslash is only ``readable``. ``url``:
    an image's URL, percent-encoding decoded instead."""
    if url:
        outer = percent_decoded(text)
        return outer, readable(outer.text)
    if "\\" not in text:
        return readable(text), None
    outer = unescaped(text)
    return outer, readable(outer.text)


def find(detect: Callable[[str], Sequence[Finding]], view: View, inner: View | None = None) -> list[Finding]:
    """What ``detect`` (a detector's ``find``) finds in the view, as spans of the text
    (``inner``: a view of ``view``'s text, as ``readable(unescaped(text).text)``)."""
    if inner is None:
        return view.spans(detect(view.text))
    return view.spans(inner.spans(detect(inner.text)))
