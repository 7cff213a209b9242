"""Case folding that keeps every offset where it was."""

from __future__ import annotations


def lower_in_place(text: str) -> str:
    """``text`` lowercased with one character for one character, so offsets still index ``text``.

    ``str.lower`` never shortens a character but may lengthen one (``"İ"`` becomes two), so an
    unchanged length means every character kept its place; otherwise the few that grow are
    left as they are (a term with them then matches only as written).
    """
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(low := c.lower()) != 1 else low for c in text)


def is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"
