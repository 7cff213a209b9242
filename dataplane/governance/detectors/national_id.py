"""``national_id``: national identification numbers, checked by ``python-stdnum``'s rules
(done in place for the written forms below, which the library would first normalise
character by character; tests hold them to the library).

=================  ==========================  ===========================================
kind               written as                  check
=================  ==========================  ===========================================
``US.ssn``         ``123-45-6789``             format rules only (area not 000, 666 or
                   (``123 45 6789``)           9xx, group not 00, serial not 0000, known
                                               advertised numbers refused): an SSN has no
                                               check digit
``GB.nino``        ``AB 12 34 56 C``           format rules only (allocated prefixes,
                                               suffix A-D): a NINO has no check digit
``DE.idnr``        ``12 345 678 901``          ISO 7064 mod 11,10 and the digit-repeat rule
``FR.nir``         ``1 84 12 76 451 089 46``   structure and the mod 97 key
``NL.bsn``         ``1234.56.782``             the 11-test
``ES.dni``         ``12345678Z``               the check letter
``ES.nie``         ``X1234567L``               the check letter
``IT.codicefiscale``  ``RSSMRA85T10A562S``     structure and the check letter
``SE.personnummer``  ``811218-9876``           a valid birth date and Luhn
=================  ==========================  ===========================================

The rule for bare digit runs (``536904399``, ``12345672``, ``36574261809``, ``8112189876``),
chosen by measuring on the corpus: one 9-digit run in eleven passes the BSN 11-test and one
in ten an IdNr check, so in an invoice, a log line or a JSON payload a bare run is a number
first and an identifier second. A bare run is therefore a finding only when one of its
identifier's words (``BSN``, ``burgerservicenummer``, ``SSN``, ``Steuer-ID``,
``personnummer``...; any case, as a whole word) stands in the 48 characters before it with
no other digit in between. The written forms above (with their separators, or with letters)
are findings without one.

Options:

- ``countries`` (default all of ``US GB DE FR NL ES IT SE``): which identifiers to look for.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.exceptions import ValidationError
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.se import personnummer
from stdnum.us import ssn

from dataplane.governance.detect import Span
from dataplane.governance.detectors._digits import windows
from dataplane.governance.detectors._options import Options
from dataplane.governance.detectors._spans import leftmost_longest
from dataplane.governance.detectors.payment_card import luhn_valid

CONTEXT_CHARS: Final = 48

_NINO: Final = re.compile(r"(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\d{6}[A-D]")


def _nino(value: str) -> str:
    compact = value.replace(" ", "").upper()
    if not _NINO.fullmatch(compact):
        raise ValidationError()
    return compact


@dataclass(frozen=True, slots=True)
class _Id:
    kind: str
    validate: Callable[[str], object]
    context: re.Pattern[str] | None
    """Words one of which must precede a bare digit run of this identifier (None: never bare)."""


def _id(kind: str, validate: Callable[[str], object], words: tuple[str, ...] = ()) -> _Id:
    context = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b") if words else None
    return _Id(kind, validate, context)


# Each identifier's check done in place for the forms the detector hands it (ASCII digits,
# and letters where the identifier has them, in its written forms without spaces), with the
# library's rules: its call first normalises the text character by character (~20 us; a text
# of identifiers is one at every dozen characters). Anything else goes to the library.


def _digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _bsn(value: str) -> str:
    """``stdnum.nl.bsn.validate``: the 11-test on the number padded to nine digits."""
    number = value.replace(".", "")
    if not _digits(number):
        return bsn.validate(value)
    number = number.zfill(9)
    if len(number) != 9 or int(number) == 0:
        raise ValidationError()
    total = -(ord(number[8]) - 48)
    for i in range(8):
        total += (9 - i) * (ord(number[i]) - 48)
    if total % 11:
        raise ValidationError()
    return number


_SSN_REFUSED: Final = frozenset({"078051120", "457555462", "219099999"})
"""Numbers advertised (on a wallet insert, in a leaflet...) that ``stdnum.us.ssn`` refuses."""


def _ssn(value: str) -> str:
    """``stdnum.us.ssn.validate`` for ``536904399`` and ``536-90-4399``: no area 000, 666 or
    9xx, no group 00, no serial 0000, none of the advertised numbers."""
    number = value[:3] + value[4:6] + value[7:] if len(value) == 11 and value[3] == value[6] == "-" else value
    if len(number) != 9 or not _digits(number):
        return ssn.validate(value)
    area = number[:3]
    if area in ("000", "666") or area[0] == "9" or number[3:5] == "00" or number[5:] == "0000":
        raise ValidationError()
    if number in _SSN_REFUSED:
        raise ValidationError()
    return number


def _idnr(value: str) -> str:
    """``stdnum.de.idnr.validate`` for ``36574261809``: no leading 0, one digit of the first
    ten written two or three times and each other once, ISO 7064 mod 11,10."""
    if len(value) != 11 or not _digits(value):
        return idnr.validate(value)
    if value[0] == "0":
        raise ValidationError()
    counts = [0] * 10
    for c in value[:10]:
        counts[ord(c) - 48] += 1
    repeated = [n for n in counts if n > 1]
    if len(repeated) != 1 or repeated[0] > 3:
        raise ValidationError()
    check = 5
    for c in value:
        check = (((check or 10) * 2) % 11 + ord(c) - 48) % 10
    if check != 1:
        raise ValidationError()
    return value


def _personnummer(value: str) -> str:
    """``stdnum.se.personnummer.validate`` for ``811218-9876``, ``19811218-9876`` (``+`` for a
    hundred or older) and the same without the sign: a date that exists (the century of a
    two-digit year the latest not after this year, a ``+`` one earlier) and Luhn."""
    n = len(value)
    if n in (11, 13) and value[-5] in "-+":
        digits, sign = value[:-5] + value[-4:], value[-5]
    elif n in (10, 12):
        digits, sign = value, "-"
    else:
        return personnummer.validate(value)
    if not _digits(digits):
        return personnummer.validate(value)
    if len(digits) == 12:
        year = int(digits[:4])
        date = digits[4:8]
    else:
        this_year = datetime.date.today().year
        century = this_year // 100
        if int(digits[:2]) > this_year % 100:
            century -= 1
        if sign == "+":
            century -= 1
        year = century * 100 + int(digits[:2])
        date = digits[2:6]
    try:
        datetime.date(year, int(date[:2]), int(date[2:]))
    except ValueError:
        raise ValidationError() from None
    if not luhn_valid(digits[-10:]):
        raise ValidationError()
    return f"{digits[:-4]}{sign}{digits[-4:]}"


_DNI_LETTERS: Final = "TRWAGMYFPDXBNJZSQVHLCKE"


def _dni(value: str) -> str:
    """``stdnum.es.dni.validate`` for ``12345678Z`` and ``12345678-Z``: the check letter."""
    n = len(value)
    if (n == 10 and value[8] == "-") or n == 9:
        number, letter = value[:8], value[-1]
    else:
        return dni.validate(value)
    if not (_digits(number) and letter.isascii() and letter.isalpha()):
        return dni.validate(value)
    letter = letter.upper()
    if _DNI_LETTERS[int(number) % 23] != letter:
        raise ValidationError()
    return number + letter


def _nie(value: str) -> str:
    """``stdnum.es.nie.validate`` for ``X1234567L`` (``X-1234567-L``, any case): the DNI's
    check letter of the number with its X, Y or Z read as 0, 1 or 2."""
    number = value.replace("-", "")
    if len(number) != 9 or not (number.isascii() and number[-1].isalpha() and _digits(number[1:8])):
        return nie.validate(value)
    number = number.upper()
    first = "XYZ".find(number[0])
    if first < 0:
        return nie.validate(value)
    if _DNI_LETTERS[(first * 10_000_000 + int(number[1:8])) % 23] != number[8]:
        raise ValidationError()
    return number


def _nir(value: str) -> str:
    """``stdnum.fr.nir.validate`` for ``184127645108946`` (the detector drops the spaces;
    Corsica's ``2A``/``2B`` in any case): the key, 97 less the first 13 digits modulo 97
    (Corsica's department read as 19 and 18)."""
    number = value.upper()
    if len(value) != 15 or not (value.isascii() and _digits(number[:5]) and _digits(number[7:])):
        return nir.validate(value)
    department = number[5:7]
    if department == "2A":
        department = "19"
    elif department == "2B":
        department = "18"
    elif not _digits(department):
        return nir.validate(value)
    if f"{97 - int(number[:5] + department + number[7:13]) % 97:02d}" != number[13:]:
        raise ValidationError()
    return number


_CF_SHAPE: Final = re.compile(r"[A-Z]{6}[0-9]{2}[A-Z][0-9]{2}[A-Z][0-9]{3}[A-Z]")
_CF_MONTHS: Final = "ABCDEHLMPRST"
_CF_ODD: Final = [
    1,
    0,
    5,
    7,
    9,
    13,
    15,
    17,
    19,
    21,
    2,
    4,
    18,
    20,
    11,
    3,
    6,
    8,
    12,
    14,
    16,
    10,
    22,
    25,
    24,
    23,
]
"""What a character at an odd place (1st, 3rd...) adds to the check: of a digit by its
value, of a letter by its place in the alphabet; at an even place, the value or place itself."""


def _codicefiscale(value: str) -> str:
    """``stdnum.it.codicefiscale.validate`` for ``RSSMRA85T10A562S`` (any case; its digits
    written as digits): a month letter, the check letter and a birth date that exists (the
    day plus 40 for a woman, the year between 1920 and 2019)."""
    number = value.upper()
    if len(number) != 16 or not number.isascii() or _CF_SHAPE.fullmatch(number) is None:
        return codicefiscale.validate(value)
    month = _CF_MONTHS.find(number[8])
    if month < 0:
        raise ValidationError()
    total = 0
    for i in range(15):
        c = ord(number[i])
        place = c - 48 if c < 65 else c - 65
        total += place if i % 2 else _CF_ODD[place]
    if chr(65 + total % 26) != number[15]:
        raise ValidationError()
    year = 1900 + int(number[6:8])
    try:
        datetime.date(year if year >= 1920 else year + 100, month + 1, int(number[9:11]) % 40)
    except ValueError:
        raise ValidationError() from None
    return number


_IDS: Final = {
    "US": [_id("US.ssn", _ssn, ("ssn", "social security", "soc. sec", "soc sec"))],
    "GB": [_id("GB.nino", _nino)],
    "DE": [
        _id(
            "DE.idnr",
            _idnr,
            ("steuer-id", "steuerid", "steuer id", "identifikationsnummer", "idnr", "tax id", "tin"),
        )
    ],
    "FR": [_id("FR.nir", _nir)],
    "NL": [
        _id(
            "NL.bsn",
            _bsn,
            ("bsn", "burgerservicenummer", "sofinummer", "sofi-nummer", "citizen service"),
        )
    ],
    "ES": [_id("ES.dni", _dni), _id("ES.nie", _nie)],
    "IT": [_id("IT.codicefiscale", _codicefiscale)],
    "SE": [_id("SE.personnummer", _personnummer, ("personnummer", "personnr", "pnr", "person nr"))],
}
_BY_KIND: Final = {i.kind: i for ids in _IDS.values() for i in ids}
_LAST_DIGIT: Final = re.compile(r".*[0-9]", re.DOTALL)

# One alternation, one scan; each branch is a fixed written form (the group name says which
# identifier), and "bare" is a digit run whose identifier its length and context decide.
_CANDIDATE: Final = re.compile(
    r"(?<![\w.-])(?:"
    r"(?P<US_ssn>\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4})"
    r"|(?P<FR_nir>[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[ABab]) ?\d{3} ?\d{3} ?\d{2})"
    r"|(?P<DE_idnr>\d{2} \d{3} \d{3} \d{3})"
    r"|(?P<NL_bsn>\d{4}\.\d{2}\.\d{3})"
    r"|(?P<SE_personnummer>(?:\d{2})?\d{6}[-+]\d{4})"
    r"|(?P<ES_dni>\d{8}-?[A-Za-z])"
    r"|(?P<bare>\d{8,12})"
    r"|(?P<GB_nino>[A-Za-z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-Da-d])"
    r"|(?P<ES_nie>[XYZxyz]-?\d{7}-?[A-Za-z])"
    r"|(?P<IT_codicefiscale>[A-Za-z]{6}\d{2}[A-Za-z]\d{2}[A-Za-z]\d{3}[A-Za-z])"
    r")(?!\w)(?![.-]\w)",
    re.ASCII,
)
_BARE_LENGTHS: Final = {
    8: ("NL.bsn",),
    9: ("NL.bsn", "US.ssn"),
    10: ("SE.personnummer",),
    11: ("DE.idnr",),
    12: ("SE.personnummer",),
}


MIN_DIGITS: Final = 6
"""Every identifier but the codice fiscale has a cluster of at least 6 digits (a NINO's
"12 34 56", a NIE's 7, a DNI's 8...)."""


def _after_six_letters(text: str, start: int, end: int) -> bool:
    return start >= 6 and text[start - 6 : start].isalpha()


class NationalIdDetector:
    name = "national_id"

    def __init__(self, countries: list[str]) -> None:
        self._kinds = {i.kind for c in countries for i in _IDS[c]}
        # A codice fiscale's digits come in clusters of 2, 2 and 3 (RSSMRA85T10A562S): its
        # first is the one right after six letters.
        self._also = _after_six_letters if "IT.codicefiscale" in self._kinds else None

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        for low, high in windows(text, MIN_DIGITS, self._also):
            for match in _CANDIDATE.finditer(text, low, high):
                group = match.lastgroup
                value = match.group()
                if group == "bare":
                    kind = self._bare(text, match.start(), value)
                else:
                    kind = group.replace("_", ".", 1) if group else None
                    if kind not in self._kinds or not _valid(_BY_KIND[kind], value):
                        kind = None
                if kind is not None:
                    spans.append(Span(match.start(), match.end(), kind))
        return leftmost_longest(spans)

    def _bare(self, text: str, start: int, value: str) -> str | None:
        before = text[max(0, start - CONTEXT_CHARS) : start].lower()
        # The word must speak of this run, not of an earlier number: only what follows the
        # last digit before the run counts ("BSN: 111222333, order 123456782").
        earlier = _LAST_DIGIT.match(before)
        if earlier is not None:
            before = before[earlier.end() :]
        for kind in _BARE_LENGTHS.get(len(value), ()):
            identifier = _BY_KIND[kind]
            context = identifier.context
            if (
                kind in self._kinds
                and context is not None
                and context.search(before)
                and _valid(identifier, value)
            ):
                return kind
        return None


def _valid(identifier: _Id, value: str) -> bool:
    try:
        # stdnum's validators drop their own separators (``-``, ``.``) but not spaces.
        identifier.validate(value.replace(" ", ""))
    except ValidationError:
        return False
    return True


def build(options: Mapping[str, Any]) -> NationalIdDetector:
    """``national_id``: see the module's docstring for the options."""
    opts = Options(options)
    countries = opts.choices("countries", _IDS, list(_IDS))
    opts.done()
    return NationalIdDetector(countries)
