"""``iban``: International Bank Account Numbers, compact or in groups of four.

A candidate is a country code, two check digits and up to 30 more letters or digits, compact
(``DE89370400440532013000``) or spaced in groups of four (``DE89 3704 0044 0532 0130 00``,
also with no-break spaces); letters of either case. ``python-stdnum`` then checks the
ISO 7064 mod 97-10 check digits, the country's length and BBAN structure and, where it has
one, the country's own check (``stdnum.iban.validate``), so a finding is an IBAN that could be
real, and near misses (a wrong check digit, a wrong length, an unknown country) are not
findings. (The registry's structures are read once per country; ``_valid`` says how.) When the last spaced group makes a candidate invalid, the candidate without it is
tried (an IBAN followed by a number in a table row). The kind is the country code.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from stdnum import iban as stdnum_iban
from stdnum import numdb
from stdnum.exceptions import ValidationError
from stdnum.util import get_cc_module

from dataplane.governance.detect import Span
from dataplane.governance.detectors._digits import OTHER, clusters_and_classes
from dataplane.governance.detectors._options import no_options

_CANDIDATE: Final = re.compile(
    r"\b[A-Za-z]{2}\d{2}(?:[ \u00a0]?[A-Za-z0-9]{4}){2,7}(?:[ \u00a0]?[A-Za-z0-9]{1,3})?\b",
    re.ASCII,
)
_SPACES: Final = str.maketrans("", "", " \u00a0")
MIN_LENGTH: Final = 15
"""Norway's, the shortest IBAN."""


# Letters count as 10..35 in the mod 97 check (ISO 13616).
_AS_DIGITS: Final = str.maketrans({c: str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})
_FIELD: Final = re.compile(r"(\d+)!([nac])")
_CLASSES: Final = {"n": "[0-9]", "a": "[A-Z]", "c": "[A-Z0-9]"}


@functools.cache
def _structure(country: str) -> re.Pattern[str] | None:
    """The country's whole IBAN as a pattern (from stdnum's IBAN registry), None if unknown."""
    bban = numdb.get("iban").info(country)[0][1].get("bban")
    if not bban:
        return None
    fields = "".join(f"{_CLASSES[kind]}{{{count}}}" for count, kind in _FIELD.findall(bban))
    return re.compile(f"{country}[0-9]{{2}}{fields}")


@functools.cache
def _length(country: str) -> int:
    """The length of the country's IBANs (0: no IBAN structure is known for it)."""
    bban = numdb.get("iban").info(country)[0][1].get("bban")
    return 4 + sum(int(count) for count, _ in _FIELD.findall(bban)) if bban else 0


@functools.cache
def _country_digits(country: str) -> str:
    return country.translate(_AS_DIGITS)


@functools.cache
def _has_national_check(country: str) -> bool:
    """Whether stdnum checks this country's BBAN further (Spain's, Belgium's check digits)."""
    return get_cc_module(country.lower(), "iban") is not None


def _valid(candidate: str) -> bool:
    """The checks of ``stdnum.iban.validate``, the registry's parts cached per country.

    Checked here: the country's structure and length, then mod 97; where stdnum has a
    national check for the country, ``stdnum.iban.validate`` itself runs as well. This
    costs a few microseconds a candidate, the library's own call ~15-50 (registry lookup
    and pattern building per call).
    """
    compact = (
        candidate.translate(_SPACES) if " " in candidate or "\u00a0" in candidate else candidate
    ).upper()
    if len(compact) < MIN_LENGTH:
        return False
    country = compact[:2]
    structure = _structure(country)
    if structure is None or structure.fullmatch(compact) is None:
        return False
    bban = compact[4:]
    if bban.isdigit():
        # Most countries' BBANs are digits only: only the country code needs translating.
        rearranged = bban + _country_digits(country) + compact[2:4]
    else:
        rearranged = (bban + compact[:4]).translate(_AS_DIGITS)
    if int(rearranged) % 97 != 1:
        return False
    if _has_national_check(country):
        try:
            stdnum_iban.validate(compact)
        except ValidationError:
            return False
    return True


class IbanDetector:
    name = "iban"

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        found, classes = clusters_and_classes(text)
        for start, _ in found:
            # An IBAN's check digits are the first digits after its country code: only a
            # cluster right after two letters can start one (most follow a space, which the
            # classes tell without slicing the text). A cluster inside the IBAN just found
            # is part of it.
            if (
                start >= 2
                and (classes is None or (classes[start - 1] == OTHER and classes[start - 2] == OTHER))
                and text[start - 2 : start].isalpha()
                and (not spans or start - 2 >= spans[-1].end)
            ):
                self._at(text, start - 2, spans)
        return spans

    @staticmethod
    def _at(text: str, at: int, spans: list[Span]) -> None:
        if (match := _CANDIDATE.match(text, at)) is None:
            return
        candidate = match.group()
        # Only a candidate of the country's length can be valid (``_valid`` checks it too):
        # the candidate itself, or else its prefix ending before a space that holds that
        # many letters and digits (an IBAN followed by a number). That one is found with one
        # match rather than by trying each shorter prefix in turn: a run of look-alike
        # groups cost up to eight tries at every one of its clusters.
        country = candidate[:2].upper()
        length = _length(country)
        if not length:
            return
        letters = len(candidate) - candidate.count(" ") - candidate.count("\u00a0")
        if letters != length:
            # A prefix ending before a space holds the header and whole groups of four.
            if letters < length or length % 4 or (prefix := _prefix(length).match(candidate)) is None:
                return
            candidate = prefix.group()
        if _valid(candidate):
            spans.append(Span(at, at + len(candidate), country))


@functools.cache
def _prefix(length: int) -> re.Pattern[str]:
    """The spaced prefix of a candidate holding ``length`` letters and digits (the country
    code, the check digits and whole groups of four), followed by a space."""
    return re.compile(
        rf"[A-Za-z]{{2}}\d{{2}}(?:[ \u00a0]?[A-Za-z0-9]{{4}}){{{(length - 4) // 4}}}(?=[ \u00a0])", re.ASCII
    )


def build(options: Mapping[str, Any]) -> IbanDetector:
    """``iban`` takes no options."""
    no_options(options)
    return IbanDetector()
