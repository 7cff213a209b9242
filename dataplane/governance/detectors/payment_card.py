"""``payment_card``: payment card numbers (PANs), Luhn-checked and matched to a card scheme.

A candidate is 13 to 19 digits written as one run or in the groups cards are printed in,
with one kind of separator (space or hyphen): 4-4-4-4 (and 4-4-4-4-1..3 for 17-19 digits,
tried as 4-4-4-4 when the longer form fails: a card followed by its CVV), 4-6-5 (American
Express), 4-6-4 (Diners). It must not continue a longer number (a digit, or a ``.``, ``,``
or ``-`` followed by a digit, on either side). It is a finding when the Luhn check passes
*and* its issuer prefix and length fit a scheme: the kind is the scheme's name. Numbers with
an unknown prefix are findings (kind ``"card"``) only at 16 digits, the common length: that
keeps out Luhn-valid identifiers that are not cards, such as IMEIs (15 digits) and
ISBN-13s, which a Luhn check alone cannot tell apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from dataplane.governance.detect import Span
from dataplane.governance.detectors._digits import runs
from dataplane.governance.detectors._options import no_options

MIN_DIGITS: Final = 13
"""The fewest digits of a candidate (``_CANDIDATE``)."""
_CANDIDATE: Final = re.compile(
    r"(?<![\d])(?<!\d[.,-])"
    r"(?:(\d{4}([ -])\d{4}\2\d{4}\2\d{4})(?:\2\d{1,3})?"
    r"|\d{4}([ -])\d{6}\3\d{4,5}"
    r"|\d{13,19})"
    r"(?![\d])(?![.,-]\d)",
    re.ASCII,
)

# (scheme, lengths, prefix ranges as (low, high) over the first n digits), most specific first.
_SCHEMES: Final[list[tuple[str, frozenset[int], list[tuple[str, str]]]]] = [
    ("amex", frozenset({15}), [("34", "34"), ("37", "37")]),
    ("diners", frozenset(range(14, 20)), [("300", "305"), ("36", "36"), ("38", "39")]),
    ("jcb", frozenset(range(16, 20)), [("3528", "3589")]),
    ("unionpay", frozenset(range(16, 20)), [("622126", "622925"), ("62", "62"), ("81", "81")]),
    ("discover", frozenset(range(16, 20)), [("6011", "6011"), ("644", "649"), ("65", "65")]),
    ("mastercard", frozenset({16}), [("51", "55"), ("2221", "2720")]),
    (
        "maestro",
        frozenset(range(12, 20)),
        [
            ("5018", "5018"),
            ("5020", "5020"),
            ("5038", "5038"),
            ("56", "58"),
            ("6304", "6304"),
            ("6759", "6759"),
            ("676770", "676770"),
            ("676774", "676774"),
        ],
    ),
    ("visa", frozenset({13, 16, 19}), [("4", "4")]),
]


_DOUBLED: Final = str.maketrans("0123456789", "0246813579")
"""A digit doubled, as the Luhn check counts it (the digit sum of 10..18 is 1..9)."""


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a string of ASCII digits: every second digit from the right doubled."""
    # Summing the bytes adds the digits in C (each byte is 48 + its digit).
    total = sum(digits[-1::-2].encode()) + sum(digits[-2::-2].translate(_DOUBLED).encode())
    return (total - 48 * len(digits)) % 10 == 0


def _prefix_table() -> dict[str, tuple[str, frozenset[int]]]:
    table: dict[str, tuple[str, frozenset[int]]] = {}
    for name, lengths, ranges in _SCHEMES:
        for low, high in ranges:
            for prefix in range(int(low), int(high) + 1):
                table.setdefault(str(prefix).zfill(len(low)), (name, lengths))
    return table


_PREFIXES: Final = _prefix_table()
"""Every issuer prefix of ``_SCHEMES`` written out (a few thousand): no two schemes share a
prefix, so a number's scheme is the one its prefix names, if its length fits it."""
_PREFIX_LENGTHS: Final = sorted({len(prefix) for prefix in _PREFIXES})


def scheme(digits: str) -> str | None:
    """The card scheme of a Luhn-valid number, ``"card"`` for an unknown 16-digit one, else None."""
    n = len(digits)
    for k in _PREFIX_LENGTHS:
        found = _PREFIXES.get(digits[:k])
        if found is not None and n in found[1]:
            return found[0]
    return "card" if n == 16 else None


def _kind(candidate: str) -> str | None:
    digits = candidate.replace(" ", "").replace("-", "")
    return scheme(digits) if luhn_valid(digits) else None


class PaymentCardDetector:
    name = "payment_card"

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        # A candidate is digits, spaces and hyphens: it lies within one cluster.
        search = _CANDIDATE.search  # a search per candidate costs less than a finditer per cluster
        for low, high in runs(text, MIN_DIGITS):
            match = search(text, low, high)
            while match is not None:
                kind = _kind(match.group())
                if kind is not None:
                    spans.append(Span(match.start(), match.end(), kind))
                elif match.group(1) is not None and match.end(1) < match.end():
                    kind = _kind(match.group(1))
                    if kind is not None:
                        spans.append(Span(match.start(), match.end(1), kind))
                # A candidate has at least MIN_DIGITS digits: a shorter rest holds none.
                at = match.end()
                match = search(text, at, high) if high - at >= MIN_DIGITS else None
        return spans


def build(options: Mapping[str, Any]) -> PaymentCardDetector:
    """``payment_card`` takes no options."""
    no_options(options)
    return PaymentCardDetector()
