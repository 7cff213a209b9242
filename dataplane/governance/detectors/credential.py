"""``credential``: secrets in well-known shapes (API keys, tokens, private keys).

Every shape starts with a fixed literal prefix: one Aho-Corasick automaton (``ahocorasick-rs``)
finds the prefixes in a single pass over the text (~10 us per 4 KB, where Python's regular
expression engine took ~800 us scanning the shapes' alternation position by position), and
the shapes' pattern is then matched only where a prefix starts a token. The shapes whose
prefix alone is weak carry an extra check. Kinds (safe to record, never the value):

==========================  ============================================================
kind                        shape
==========================  ============================================================
``aws_access_key_id``       ``AKIA``/``ASIA``/``AIDA``/``AROA``... + 16 upper-case letters or digits
``github_token``            ``ghp_``/``gho_``/``ghs_``/``ghu_``/``ghr_`` + 36 or more; ``github_pat_...``
``slack_token``             ``xoxa-``/``xoxb-``/``xoxp-``/``xoxr-``/``xoxs-`` + 10 or more
``stripe_key``              ``sk_live_``/``rk_live_`` + 16 or more
``anthropic_key``           ``sk-ant-`` + 20 or more
``openai_key``              ``sk-`` (``sk-proj-``, ``sk-svcacct-``, ``sk-admin-``) + 20 or more, with a
                            letter and a digit (``sk-learn-is-a-library`` is not a key)
``google_api_key``          ``AIza`` + 35
``signalbox_api_key``       ``sbx_<32 hex>_<43 base64url>`` (controlplane/services/keys.py)
``signalbox_enroll_token``  ``sbx_enroll_<16 hex>_<43 base64url>``
``signalbox_admin_token``   ``sbxadm_<43 base64url>``
``jwt``                     three base64url parts whose first decodes to a JSON object with ``alg``
``private_key``             a PEM ``-----BEGIN ... PRIVATE KEY-----`` block (to its END line,
                            or to the end of its base64 body when the END line is missing)
==========================  ============================================================

Takes no options.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Final

import ahocorasick_rs

from dataplane.governance.detect import Span
from dataplane.governance.detectors._options import no_options

_B64URL = r"[A-Za-z0-9_-]"
# A shape starts only where a token-character run starts and its runs are possessive: each
# character is read a bounded number of times, however many "eyJ" or "sk-" the text holds.
_START = r"(?<![A-Za-z0-9_-])"
_END = r"(?![A-Za-z0-9_-])"
_SHAPES: Final = re.compile(
    "|".join(
        [
            rf"(?P<aws_access_key_id>{_START}(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{{16}}{_END})",
            rf"(?P<github_token>{_START}(?:gh[pousr]_[A-Za-z0-9]{{36,255}}+|github_pat_[A-Za-z0-9_]{{22,255}}+){_END})",
            rf"(?P<slack_token>{_START}xox[abprs]-[A-Za-z0-9-]{{10,250}}+{_END})",
            rf"(?P<stripe_key>{_START}[rs]k_live_[A-Za-z0-9]{{16,247}}+{_END})",
            rf"(?P<anthropic_key>{_START}sk-ant-{_B64URL}{{20,250}}+{_END})",
            rf"(?P<openai_key>{_START}sk-(?:proj-|svcacct-|admin-)?{_B64URL}{{20,250}}+{_END})",
            rf"(?P<google_api_key>{_START}AIza{_B64URL}{{35}}{_END})",
            rf"(?P<signalbox_enroll_token>{_START}sbx_enroll_[0-9a-f]{{16}}_{_B64URL}{{43}}{_END})",
            rf"(?P<signalbox_api_key>{_START}sbx_[0-9a-f]{{32}}_{_B64URL}{{43}}{_END})",
            rf"(?P<signalbox_admin_token>{_START}sbxadm_{_B64URL}{{43}}{_END})",
            rf"(?P<jwt>{_START}eyJ{_B64URL}{{10,4096}}+\.{_B64URL}{{2,65536}}+\.{_B64URL}{{0,4096}}+{_END})",
            r"(?P<private_key>-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----)",
        ]
    )
)
_PREFIXES: Final = ahocorasick_rs.AhoCorasick(
    [
        *("AKIA", "ASIA", "AIDA", "AROA", "AGPA", "ANPA", "ANVA", "AIPA"),
        *("ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_"),
        *("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "sk_live_", "rk_live_", "sk-", "AIza"),
        *("sbx_", "sbxadm_", "eyJ", "-----BEGIN "),
    ],
    matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
)
_PEM_BODY: Final = re.compile(r"[A-Za-z0-9+/=\s\\:,-]*+")
_PEM_END: Final = re.compile(r"-----END (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
MAX_PEM_CHARS: Final = 16_384
"""How far past a BEGIN line its END line is looked for (an RSA-8192 key is under 7 KB)."""
MAX_PEM_END_CHARS: Final = len("-----END PRIVATE KEY BLOCK-----") + 3 * 17
"""The longest END line ``_PEM_END`` matches."""


def _has_letter_and_digit(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _jwt_header(token: str) -> bool:
    header = token.partition(".")[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and isinstance(decoded.get("alg"), str)


class CredentialDetector:
    name = "credential"

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        position = 0
        # The END line after each BEGIN line, looked for once per stretch of text: BEGIN lines
        # come in order, so a closing found (or a stretch found to hold none) answers for every
        # BEGIN line before it, and no character is searched twice for one (a text of BEGIN
        # lines without END lines would otherwise cost MAX_PEM_CHARS per line).
        closing: re.Match[str] | None = None
        searched = 0  # _PEM_END has been looked for in text[:searched]
        for _, at, _ in _PREFIXES.find_matches_as_indexes(text):
            if at < position:
                continue  # inside the previous finding (a JWT's second part starts "eyJ" too)
            match = _SHAPES.match(text, at)
            if match is None:
                continue
            kind = match.lastgroup or "credential"
            start, end = match.span()
            position = end
            if kind == "openai_key":
                if not _has_letter_and_digit(match.group()[3:]):
                    continue
            elif kind == "jwt":
                if not _jwt_header(match.group()):
                    continue
            elif kind == "private_key":
                limit = min(len(text), end + MAX_PEM_CHARS)
                if closing is None or closing.start() < end:
                    if closing is not None or searched <= end:
                        closing = _PEM_END.search(text, end, limit)
                    else:
                        # None in text[:searched]: one may still end past it (a match is at
                        # most MAX_PEM_END_CHARS long).
                        closing = _PEM_END.search(text, max(end, searched - MAX_PEM_END_CHARS), limit)
                    searched = limit
                if closing is not None:
                    end = closing.end()
                else:
                    # A body read to the end of its characters: the next BEGIN line is past it.
                    body = _PEM_BODY.match(text, end)
                    end = body.end() if body else end
                # A body read to the end of the text stops before trailing whitespace.
                while end > start and text[end - 1].isspace():
                    end -= 1
                position = end
            spans.append(Span(start, end, kind))
        return spans


def build(options: Mapping[str, Any]) -> CredentialDetector:
    """``credential`` takes no options."""
    no_options(options)
    return CredentialDetector()
