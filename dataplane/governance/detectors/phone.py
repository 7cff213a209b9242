"""``phone``: telephone numbers, international (``+49 30 1234567``, ``0049...``) or national.

Validity is Google's libphonenumber's (``phonenumbers``): a finding is a number that exists in
its region's numbering plan, not just a run of digits. ``PhoneNumberMatcher`` (leniency
``VALID``) and ``parse`` + ``is_valid_number`` measured ~400 us and ~30 us per number here;
what they decide is whether the national number fits one of the region's number types
(fixed line, mobile, toll free...: each a set of possible lengths and a pattern), so the
detector reads those from the library's metadata once per region and checks them itself
(microseconds). ``tests/dataplane/governance/test_phone_agreement.py`` checks that it agrees
with ``parse`` + ``is_valid_number`` on every number of the corpus and on random digit
strings. The steps:

1. a possessive pattern finds runs of digits and phone punctuation (one linear scan, only
   around the text's digit clusters); a run must not follow a letter, digit or ``+.,-``;
2. a run with fewer than 7 or more than 17 digits is not a number (a card, an IBAN, a year);
   nor is a run starting with a date (``2024-01-15``, ``15.01.2024``, ``1/15/24``), a dotted
   quad (an IP address) or a run followed by ``:`` and a digit (a time);
3. a run starting ``+`` or ``00`` is a country calling code and a national number of one of
   that code's regions (a trunk prefix written as ``(0)`` is dropped); any other run is a
   national number, written with its trunk prefix where that is 0 (``030 1234567``), of one
   of ``regions``, tried in order.

Two numbers separated by nothing but a space read as one run, which is then no valid number
(a known miss in the corpus); a comma, semicolon or word between them is enough. Regions
whose trunk prefix is not a plain digit string (parsing rules that rewrite the number, as
in Argentina or Mexico) are checked without stripping one.

Options:

- ``regions`` (default ``["US", "DE", "FR", "GB"]``): the regions a number written without a
  country code may belong to, in order of preference (region codes the library knows).

Kind: the region of the number (``"DE"``), whatever format it was written in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

import phonenumbers

from dataplane.governance.detect import Span
from dataplane.governance.detectors._digits import runs
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
_NOT_DIGITS: Final = "+()/-. \u00a0".encode()
"""What a run holds besides its digits (UTF-8, for ``bytes.translate``)."""
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
    """A region's numbering plan, precompiled: what ``is_valid_number`` checks, in microseconds."""

    __slots__ = ("code", "country_code", "general", "general_lengths", "trunk", "types")

    def __init__(self, code: str) -> None:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(code)
        if metadata is None or metadata.general_desc is None:
            raise ValueError(f"no numbering plan for region {code}")
        self.code = code
        self.country_code: int = metadata.country_code or 0
        prefix = metadata.national_prefix or ""
        self.trunk = prefix if prefix.isdigit() else ""
        general_lengths = frozenset(metadata.general_desc.possible_length or ())
        # Every number of the region fits its general description: one check rules most out.
        self.general_lengths = general_lengths
        self.general = re.compile(metadata.general_desc.national_number_pattern or "(?!)")
        # A number is valid when it fits one of the region's number types (fixed line, mobile,
        # toll free...): that type's possible lengths and national number pattern.
        self.types: list[tuple[frozenset[int], re.Pattern[str]]] = []
        for name in _NUMBER_TYPES:
            desc = getattr(metadata, name, None)
            if desc is None or not desc.national_number_pattern:
                continue
            lengths = frozenset(desc.possible_length or ())
            if not lengths or lengths == {-1}:
                lengths = general_lengths
            self.types.append((lengths, re.compile(desc.national_number_pattern)))

    def fits(self, national: str) -> bool:
        n = len(national)
        if n not in self.general_lengths or self.general.fullmatch(national) is None:
            return False
        for lengths, pattern in self.types:
            if n in lengths and pattern.fullmatch(national) is not None:
                return True
        return False

    def national(self, digits: str) -> str | None:
        """The region of ``digits`` written as a national number here, or None.

        Regions sharing a country code share national numbers: a number dialled in the US
        may be Canada's or the Dominican Republic's (the main region is tried first).
        """
        if self.trunk and digits.startswith(self.trunk):
            digits = digits[len(self.trunk) :]
        elif self.trunk == "0":
            # Where the trunk prefix is 0 (most of Europe), a national number is written
            # with it: "1234567890" is an order number, "01234 567890" a number in Bedford.
            return None
        if self.fits(digits):
            return self.code
        if len(digits) not in self.general_lengths:
            return None
        codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(self.country_code, ())
        return next((c for c in codes if c != self.code and c.isalpha() and _region(c).fits(digits)), None)

    def subscriber(self, digits: str) -> bool:
        """Whether ``digits``, following this region's country code, are a number of it."""
        if self.fits(digits):
            return True
        # "+49 (0)30 ...": the trunk prefix written in brackets after the country code.
        return bool(self.trunk) and digits.startswith(self.trunk) and self.fits(digits[len(self.trunk) :])


@functools.cache
def _region(code: str) -> _Region:
    return _Region(code)


@functools.cache
def _calling(code: str) -> tuple[_Region, ...] | None:
    """The regions of country calling code ``code`` (digits), the main one first (GB before
    GG, IM and JE); None for a code that is no country's."""
    codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(code))
    if not codes:
        return None
    return tuple(_region(c) for c in codes if c.isalpha())


def _international(digits: str) -> str | None:
    """The region of ``digits`` (after ``+`` or ``00``) if they are a valid number, else None."""
    for n in (1, 2, 3):
        regions = _calling(digits[:n])
        if regions is not None:
            subscriber = digits[n:]
            for region in regions:
                if region.subscriber(subscriber):
                    return region.code
            return None
    return None


class PhoneDetector:
    name = "phone"

    def __init__(self, regions: list[str]) -> None:
        self._regions = [_region(code) for code in regions]
        # A region whose trunk prefix is 0 reads only numbers written with it; the others
        # read any (``_Region.national``): the regions worth asking, by "starts with 0".
        self._national = (
            [r for r in self._regions if r.trunk != "0"],
            self._regions,
        )

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        # A run is digits and number punctuation, all cluster characters, opened by at most
        # "(+": it lies within a cluster and the two characters before it.
        search = _RUN.search  # a search per run costs less than a finditer per cluster
        for low, high in runs(text, MIN_DIGITS, 2):
            run = search(text, low, high)
            while run is not None:
                self._check(text, run, spans)
                # What is left of the range after a run is usually a space or a full stop:
                # too short to hold a number, not worth a search.
                at = run.end()
                run = search(text, at, high) if high - at >= MIN_DIGITS else None
        return spans

    def _check(self, text: str, run: re.Match[str], spans: list[Span]) -> None:
        """A finding if ``run`` is a valid number."""
        raw = run.group()
        digits = raw.encode().translate(None, _NOT_DIGITS).decode()
        if not MIN_DIGITS <= len(digits) <= MAX_DIGITS or _NOT_A_NUMBER.match(raw):
            return
        start, end = run.start(), run.start() + len(raw)
        if text.startswith(":", end) and _TIME_AFTER.match(text, end):
            return
        if raw.lstrip("(").startswith("+"):
            kind = _international(digits)
        elif digits.startswith("00"):
            kind = _international(digits[2:])
        else:
            kind = next((k for r in self._national[digits[0] == "0"] if (k := r.national(digits))), None)
        if kind:
            spans.append(Span(start, end, kind))


def build(options: Mapping[str, Any]) -> PhoneDetector:
    """``phone``: see the module's docstring for the options."""
    opts = Options(options)
    supported = {code: code for code in phonenumbers.SUPPORTED_REGIONS}
    regions = opts.choices("regions", supported, DEFAULT_REGIONS)
    opts.done()
    return PhoneDetector(regions)
