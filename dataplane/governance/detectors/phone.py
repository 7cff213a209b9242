"""``phone``: telephone numbers, international (``+49 30 1234567``, ``0049...``) or national.

Validity is Google's libphonenumber's (``phonenumbers``): ``parse`` then ``is_valid_number``,
the check ``PhoneNumberMatcher`` makes at leniency ``VALID``, so a finding is a number that
exists in its region's numbering plan, not just a run of digits. The matcher itself is not
used: measured here it costs ~400 us per number in context (it re-parses many sub-candidates
and regions), against ~30 us for one parse. Instead:

1. a possessive pattern finds runs of digits and phone punctuation (one linear scan); a run
   must not follow a letter, digit or ``+.,-``, and trailing punctuation is not part of it;
2. a run with fewer than 7 or more than 17 digits is not a number (a card, an IBAN, a year);
   nor is a run starting with a date (``2024-01-15``, ``15.01.2024``, ``1/15/24``), a dotted
   quad (an IP address) or a run
   followed by ``:`` and a digit (a time);
3. a run starting ``+`` or ``00`` must start with a country calling code; a national run
   (its trunk prefix stripped) must fit one of the number-type patterns (fixed line,
   mobile, toll free...) of one of ``regions``, precompiled from the library's metadata:
   microseconds, where a parse costs tens;
4. only then the number is parsed and validated, for the regions that passed, in order.

Two numbers separated by nothing but a space read as one run, which is then no valid number
(a known miss in the corpus); a comma, semicolon or word between them is enough.

Options:

- ``regions`` (default ``["US", "DE", "FR", "GB"]``): the regions a number written without a
  country code may belong to, in order of preference (region codes the library knows).

Kind: the region of the number (``"DE"``), whatever format it was written in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import phonenumbers

from dataplane.governance.detect import Span
from dataplane.governance.detectors._digits import windows
from dataplane.governance.detectors._options import Options

DEFAULT_REGIONS: Final = ["US", "DE", "FR", "GB"]
# Groups of digits with one separator between them (a space, one of ``./-``) and optionally a
# bracketed group (``(0)30``, ``(415) 555``), so a number ends where a sentence does
# ("... 1234567. 15.01.2024"). Possessive: linear.
_RUN: Final = re.compile(
    r"(?<![\w+.,-])(?:\+|\(\+?\d{1,5}\)[ \u00a0]?)?\d++"
    r"(?:(?:[ \u00a0]?[/-][ \u00a0]?|[ \u00a0.])?(?:\(\d{1,5}\)[ \u00a0]?)?\d++)*+",
    re.ASCII,
)
_NOT_DIGITS: Final = re.compile(r"[^0-9]")
MIN_DIGITS: Final = 7
MAX_DIGITS: Final = 17
"""E.164's 15 digits plus an international ``00`` prefix."""
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_NOT_A_NUMBER: Final = re.compile(
    rf"\d{{4}}-{_MONTH}-{_DAY}(?!\d)|{_DAY}[./-]{_MONTH}[./-](?:\d{{4}}|\d\d)(?!\d)|{_MONTH}/{_DAY}/\d\d"
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$",
    re.ASCII,
)
_TIME_AFTER: Final = re.compile(r":[0-9]")


_NUMBER_TYPES: Final = (
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "personal_number",
    "voip",
    "pager",
    "uan",
    "voicemail",
)


class _Region:
    __slots__ = ("code", "pattern", "trunk")

    def __init__(self, code: str) -> None:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(code)
        if metadata is None or metadata.general_desc is None:
            raise ValueError(f"no numbering plan for region {code}")
        self.code = code
        prefix = metadata.national_prefix or ""
        self.trunk = prefix if prefix.isdigit() else ""
        # The union of the region's number types (fixed line, mobile, toll free...): what
        # is_valid_number matches against, so a number passing here nearly always is one.
        types = [getattr(metadata, t, None) for t in _NUMBER_TYPES]
        patterns = [d.national_number_pattern for d in types if d is not None and d.national_number_pattern]
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns) or "(?!)")

    def plausible(self, digits: str) -> bool:
        if self.trunk and digits.startswith(self.trunk):
            digits = digits[len(self.trunk) :]
        elif self.trunk == "0":
            # Where the trunk prefix is 0 (most of Europe), a national number is written
            # with it: "1234567890" is an order number, "01234 567890" a number in Bedford.
            return False
        return self.pattern.fullmatch(digits) is not None


def _international(digits: str) -> bool:
    for n in (1, 2, 3):
        if int(digits[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return len(digits) - n >= 4
    return False


class PhoneDetector:
    name = "phone"

    def __init__(self, regions: list[str]) -> None:
        self._regions = [_Region(code) for code in regions]

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        for low, high in windows(text, MIN_DIGITS):
            self._window(text, low, high, spans)
        return spans

    def _window(self, text: str, low: int, high: int, spans: list[Span]) -> None:
        for run in _RUN.finditer(text, low, high):
            raw = run.group()
            digits = _NOT_DIGITS.sub("", raw)
            if not MIN_DIGITS <= len(digits) <= MAX_DIGITS or _NOT_A_NUMBER.match(raw):
                continue
            start, end = run.start(), run.start() + len(raw)
            if _TIME_AFTER.match(text, end):
                continue
            if raw.lstrip("(").startswith("+") or digits.startswith("00"):
                international = (
                    digits[2:] if digits.startswith("00") and not raw.lstrip("(").startswith("+") else digits
                )
                kind = _valid("+" + international, None) if _international(international) else None
            else:
                kind = next(
                    (k for r in self._regions if r.plausible(digits) and (k := _valid(raw, r.code))), None
                )
            if kind:
                spans.append(Span(start, end, kind))


def _valid(number: str, region: str | None) -> str | None:
    """The region of ``number`` if libphonenumber finds it valid, else None."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.region_code_for_number(parsed) or "ZZ"


def build(options: Mapping[str, Any]) -> PhoneDetector:
    """``phone``: see the module's docstring for the options."""
    opts = Options(options)
    supported = {code: code for code in phonenumbers.SUPPORTED_REGIONS}
    regions = opts.choices("regions", supported, DEFAULT_REGIONS)
    opts.done()
    return PhoneDetector(regions)
