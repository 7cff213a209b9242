"""``regex``: a tenant's own regular expressions, run by RE2.

Tenant patterns are hostile input on the node's hot path: with a backtracking engine
``(a+)+$`` takes exponential time on a line of ``a``. RE2 (``google-re2``) guarantees time
linear in the text and refuses the constructs that would need backtracking
(backreferences, lookaround), so such a pattern is refused when the profile is applied, not
discovered under load. Each pattern is compiled alone first (so an error names its index),
then all are joined into one alternation scanned once per text. A pattern that matches the
empty string (``a*``) is refused: it would match between every two characters. One that
matches it only somewhere (``\\b``, ``x*\\b``: at a word boundary, not in an empty text)
cannot be told apart when applied, so an empty match is never a finding: a block rule
would otherwise refuse every text with a word in it, and a redact rule insert its
placeholder at every word boundary.

Options:

- ``patterns`` (required): 1 to 64 RE2 patterns of at most 1,000 characters each;
- ``case_insensitive`` (default false);
- ``kind`` (default ``"pattern"``): the label findings carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import re2

from dataplane.governance.detect import DetectorConfigError, Span
from dataplane.governance.detectors._options import Options

MAX_PATTERNS: Final = 64
MAX_PATTERN_CHARS: Final = 1_000
MAX_PROGRAM_BYTES: Final = 8 << 20
"""RE2's memory budget for one compiled set: a pattern like ``(x{1000}){1000}`` that would
need more is refused rather than built."""


def _options(case_insensitive: bool) -> re2.Options:
    options = re2.Options()
    options.case_sensitive = not case_insensitive
    options.max_mem = MAX_PROGRAM_BYTES
    options.log_errors = False
    return options


def _compile(pattern: str, options: re2.Options, field: str) -> re2._Regexp[str]:
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        # RE2 quotes the offending piece of the pattern; a pattern is the tenant's own, but a
        # message is bounded all the same.
        raise DetectorConfigError(field, f"not a valid RE2 pattern: {str(reason)[:200]}") from None


class RegexDetector:
    name = "regex"

    def __init__(self, compiled: re2._Regexp[str], kind: str) -> None:
        self._regex = compiled
        self._kind = kind

    def find(self, text: str) -> list[Span]:
        kind = self._kind
        return [
            Span(start, end, kind)
            for m in self._regex.finditer(text)
            if (start := m.start()) < (end := m.end())
        ]


def build(options: Mapping[str, Any]) -> RegexDetector:
    """``regex``: see the module's docstring for the options."""
    opts = Options(options)
    patterns = opts.strings("patterns", max_items=MAX_PATTERNS, max_chars=MAX_PATTERN_CHARS)
    case_insensitive = opts.boolean("case_insensitive", False)
    kind = opts.kind("pattern")
    opts.done()
    re2_options = _options(case_insensitive)
    for i, pattern in enumerate(patterns):
        if _compile(pattern, re2_options, f"options.patterns[{i}]").fullmatch("") is not None:
            # It would "match" between every two characters of every text.
            raise DetectorConfigError(f"options.patterns[{i}]", "matches the empty string")
    joined = "|".join(f"(?:{p})" for p in patterns)
    return RegexDetector(_compile(joined, re2_options, "options.patterns"), kind)
