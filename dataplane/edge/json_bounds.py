"""How many objects and arrays a JSON request body holds, counted before it is parsed.

A 16 MB body can hold five million empty arrays (``[[],[],...]``) or eight million nested
ones: orjson spends 1.5 to 3.5 s of CPU building them and the depth walk another 0.4 to
1.4 s, all holding the GIL, wherever in the body they sit (a key the door ignores, or one
it refuses only once the body is parsed). No request the doors take needs more than a few
tens of thousands (2,048 messages of 4 parts, 8,192 tool calls, 128 tools and 1 MiB of
schemas), so a body is refused past ``MAX_JSON_CONTAINERS`` before it is parsed, and what
is parsed is bounded: scalars cost orjson a tenth of what containers do.

The count is cheap where it matters. Every object or array opens with ``{`` or ``[``, so
their number in the bytes (C speed, ~10 ms for 16 MB) bounds it from above; only a body
over the limit by that bound (brackets in its strings: JSON or code as text, which is
legitimate) is counted precisely, by one regular expression that steps over strings and
stops at the limit (~0.15 s for the worst 16 MB, four million one-bracket strings); it
measures the nesting on the way, so such a body's parsed value need not be walked for it.
"""

from __future__ import annotations

import re

MAX_JSON_CONTAINERS = 200_000
"""Objects and arrays in one request body, all levels together."""

_STRUCTURE = re.compile(
    rb"""
    (?:
        "[^"]*+(?:"|\Z)     # a string (escapes removed first): its brackets are text
      | [^"\[\]{}]++         # anything else that opens or closes nothing
    )*+
    (?:([\[{])|([\]}])|\Z)  # an object or array opens (group 1) or closes (2), or the text ends
    """,
    re.VERBOSE,
)
"""One match per object or array opened or closed outside strings, and one or two at the end.
Every quantifier is possessive and every position matches, so the scan is linear (an
unterminated string runs to the end rather than being retried from each position after it)."""


def json_shape(body: bytes, limit: int, depth_limit: int) -> tuple[bool, bool | None]:
    """Whether the JSON text ``body`` holds more than ``limit`` objects and arrays, and, when
    that took counting them, whether they nest deeper than ``depth_limit`` (None: not known,
    the parsed value's walk says). Exact for valid JSON; for invalid JSON (which the parse
    refuses anyway) either may be wrong."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False, None
    # An escaped backslash, then an escaped quote, removed: every quote left delimits a
    # string (bytes.replace goes left to right, as a JSON reader pairs backslashes).
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    opened = depth = deepest = 0
    for match in _STRUCTURE.finditer(text):
        kind = match.lastindex
        if kind == 1:
            opened += 1
            if opened > limit:
                return True, None
            depth += 1
            deepest = max(deepest, depth)
        elif kind == 2:
            depth -= 1
    # Known here, the parsed value is not walked for it: the walk visits every value of the
    # body, which for four million strings was a third of the cost of refusing it.
    return False, deepest > depth_limit
