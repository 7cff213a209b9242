"""Untrusted strings made safe to log and display.

A node id, software version or NACK reason comes from the other end of a
connection. Written verbatim, a newline in it forges a log line and an ANSI escape
rewrites the operator's terminal. ``printable`` escapes every control character
(``\\n`` -> ``\\\\n``, ESC -> ``\\\\x1b``, C1 controls, bidi overrides and other format
characters likewise) and clips the result, so the output is one bounded line.
Backslashes are kept as they are, so escaping is idempotent: what was stored
escaped is shown unchanged, not escaped twice.
"""

from __future__ import annotations

import unicodedata

DEFAULT_LIMIT = 500
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    # Cc: C0/C1 controls (ESC, DEL, ...). Cf: format characters (bidi overrides, zero widths).
    # Zl/Zp: line and paragraph separators, which some viewers break lines at.
    if unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp", "Cs"}:
        code = ord(ch)
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
    return ch


def printable(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as one line with control characters escaped, at most about ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    out: list[str] = []
    size = 0
    for i, ch in enumerate(text):
        piece = _escape(ch)
        if size + len(piece) > limit:
            return "".join(out) + f"...[{len(text) - i} more chars]"
        out.append(piece)
        size += len(piece)
    return "".join(out)


def printable_within(value: object, limit: int) -> str:
    """``printable`` held to ``limit`` characters in all, its clip note included: what fits a
    column of that width (``printable`` clips to about ``limit`` and adds the note after)."""
    text = printable(value, limit)
    if len(text) <= limit:
        return text
    note = len(f"...[{len(str(value))} more chars]")  # the longest note a clip of it can add
    return printable(value, max(0, limit - note))
