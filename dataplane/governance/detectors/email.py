"""``email``: e-mail addresses as they appear in prose, logs, JSON, CSV and code.

Anchored on each ``@`` (no ``@``, no work): the local part is read leftwards (at most 64
characters, RFC 5321's limit) and the domain rightwards with a possessive pattern, so the
cost stays linear whatever the text. Internationalised addresses (letters beyond ASCII, RFC
6531) are found too.

Deliberately not findings (measured on the corpus as near misses):

- a domain without a dot and a top-level label of two or more letters (``user@localhost``,
  ``root@db01``, ``@decorator``, ``@mention``): machine names, not mailboxes;
- a "top-level domain" that is a file extension (``logo@2x.png``, ``icon@3x.webp``):
  asset names, not addresses;
- obfuscated forms (``name at example dot com``): too ambiguous to find without guessing;
- quoted local parts (``"john smith"@example.com``): legal, vanishingly rare, and the quote
  marks around them are ordinary punctuation in prose (a known miss in the corpus).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from dataplane.governance.detect import Span
from dataplane.governance.detectors._options import no_options

MAX_LOCAL: Final = 64
# The practical local-part alphabet: RFC 5322 also allows ``/ = ? & ' { | }`` and more, but in
# real text those are URL and code punctuation far more often than parts of an address.
_LOCAL_CHAR = re.compile(r"[\w.%+-]{1,64}")
# Labels of letters, digits and hyphens, at least one dot, a top-level label of letters. The
# quantifiers inside a label are possessive and a domain cannot contain "@", so each "@" scans
# only up to the next one: linear over the whole text.
_DOMAIN = re.compile(r"(?:[^\W_][\w-]{0,62}+\.)+([^\W\d_]{2,63}+)(?![\w-])")
# File extensions that are not also top-level domains (.py, .md, .rs and .zip are, so they stay).
_FILE_EXTENSIONS: Final = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "css", "js", "mjs", "ts", "tsx"}
    | {"jsx", "json", "txt", "html", "htm", "yml", "yaml", "toml", "lock", "rb", "java", "class", "jar", "gz"}
    | {"tar", "pdf"}
)


class EmailDetector:
    name = "email"

    def find(self, text: str) -> list[Span]:
        at = text.find("@")
        if at < 0:
            return []
        spans: list[Span] = []
        last_end = 0
        while at >= 0:
            span = self._at(text, at, last_end)
            if span is not None:
                spans.append(span)
                last_end = span.end
                at = text.find("@", span.end)
            else:
                at = text.find("@", at + 1)
        return spans

    @staticmethod
    def _at(text: str, at: int, floor: int) -> Span | None:
        window_start = max(floor, at - MAX_LOCAL)
        # The local part is the run of local-part characters just before the @, read
        # backwards over the reversed window so the pattern is anchored where the run ends.
        match = _LOCAL_CHAR.match(text[window_start:at][::-1])
        if match is None:
            return None
        start = at - match.end()
        # A dot may not start the local part ("...@" in prose, "x.@" in code).
        while start < at and text[start] == ".":
            start += 1
        if start == at or text[at - 1] == ".":
            return None
        domain = _DOMAIN.match(text, at + 1)
        if domain is None or domain.group(1).lower() in _FILE_EXTENSIONS:
            return None
        if domain.end() - at - 1 > 253:
            return None
        return Span(start, domain.end(), "address")


def build(options: Mapping[str, Any]) -> EmailDetector:
    """``email`` takes no options."""
    no_options(options)
    return EmailDetector()
