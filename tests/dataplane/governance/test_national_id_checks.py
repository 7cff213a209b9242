"""The national_id detector's checks done in place of python-stdnum's for the forms it hands
them (SSN, Steuer-IdNr, personnummer, DNI, NIE, NIR, codice fiscale) agree with the library on random
and edge values, valid ones among them; and a text of any of those identifiers, in its plain
written forms, makes no call to the library (it cost 200-520 ms of CPU per MiB). The BSN's
check, done in place before, is held to the library in ``test_detector_rewrites``."""

from __future__ import annotations

import random
import string
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import luhn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.exceptions import ValidationError
from stdnum.fr import nir
from stdnum.iso7064 import mod_11_10
from stdnum.it import codicefiscale
from stdnum.se import personnummer
from stdnum.us import ssn

from dataplane.governance import detect
from dataplane.governance.detectors import national_id

DIGITS = string.digits
Check = Callable[[str], object]


def _outcome(check: Check, value: str) -> object:
    try:
        return check(value)
    except ValidationError:
        return None


def _disagreements(ours: Check, theirs: Check, values: list[str]) -> list[str]:
    return [v for v in values if _outcome(ours, v) != _outcome(theirs, v)]


def _digits(draw: Any, n: int) -> str:
    return "".join(draw(st.sampled_from(DIGITS)) for _ in range(n))


# ---- SSN: 536904399, 536-90-4399 ----

_SSN_EDGES = ["078051120", "078-05-1120", "457-55-5462", "219099999", "000123456", "666-12-3456"]
_SSN_EDGES += ["912-34-5678", "123-00-4567", "123450000", "536-904399", "536 90 4399", "5369043990"]
_SSN_EDGES += ["٥٣٦٩٠٤٣٩٩", "536\u201390\u20134399", "53690439", "", "-", "536904399\n"]


def _ssn_value(rng: random.Random) -> str:
    area = rng.choice([f"{rng.randrange(1000):03d}", "000", "666", f"9{rng.randrange(100):02d}", "078"])
    group = rng.choice([f"{rng.randrange(100):02d}", "00", "05"])
    serial = rng.choice([f"{rng.randrange(10000):04d}", "0000", "1120"])
    return f"{area}-{group}-{serial}" if rng.random() < 0.5 else area + group + serial


@st.composite
def _ssns(draw: Any) -> str:
    area = draw(st.one_of(st.sampled_from(["000", "666", "900", "999", "078", "457", "219"]), st.just("")))
    area = area or _digits(draw, 3)
    group = draw(st.sampled_from(["00", "05", "55", ""])) or _digits(draw, 2)
    serial = draw(st.sampled_from(["0000", "1120", "5462", "9999", ""])) or _digits(draw, 4)
    sep = draw(st.sampled_from(["", "-", " ", "\u2013"]))
    return f"{area}{sep}{group}{sep}{serial}"


# ---- Steuer-IdNr: 36574261809 ----

_IDNR_EDGES = ["36574261809", "06574261809", "11111111111", "12345678901", "3657426180", "365742618090"]
_IDNR_EDGES += ["36 574 261 809", "36-574-261-809", "٣6574261809", "", "36574261809\n"]


def _idnr_body(rng: random.Random) -> str:
    """Ten digits with one of them two or three times (the shape a valid IdNr has), or not."""
    shape = rng.randrange(4)
    if shape == 3:
        return "".join(rng.choice(DIGITS) for _ in range(10))
    pool = rng.sample(DIGITS, 10 - shape - 1 if shape < 2 else 7)
    repeated = pool[0]
    body = pool + [repeated] * (shape + 1 if shape < 2 else 3)
    rng.shuffle(body)
    return "".join(body[:10])


def _idnr_value(rng: random.Random) -> str:
    body = _idnr_body(rng)
    check = mod_11_10.calc_check_digit(body) if rng.random() < 0.7 else rng.choice(DIGITS)
    return body + check


@st.composite
def _idnrs(draw: Any) -> str:
    return _idnr_value(draw(st.randoms(use_true_random=False)))


# ---- personnummer: 811218-9876, 19811218-9876, 8112189876, 198112189876 ----

_PNR_EDGES = ["811218-9876", "8112189876", "19811218-9876", "198112189876", "811218+9876", "000229-0000"]
_PNR_EDGES += ["040229-1230", "19000229-1238", "20000229-1236", "811232-9876", "811318-9876", "811200-9876"]
_PNR_EDGES += ["811218 9876", "811218:9876", "81121-89876", "811218-987", "٨11218-9876", "", "-"]


def _pnr_value(rng: random.Random) -> str:
    year = rng.choice([f"{rng.randrange(100):02d}", "00", "04", "24", "25", "26", "99"])
    month = rng.choice([f"{rng.randint(1, 12):02d}", "00", "13", "02"])
    day = rng.choice([f"{rng.randint(1, 28):02d}", "29", "30", "31", "00", "32", "61"])
    body = f"{year}{month}{day}{rng.randrange(1000):03d}"
    body += luhn.calc_check_digit(body) if rng.random() < 0.8 else rng.choice(DIGITS)
    if rng.random() < 0.4:
        body = rng.choice(["19", "20", "18", "00", "21"]) + body
    sign = rng.choice(["-", "-", "+", ""])
    return f"{body[:-4]}{sign}{body[-4:]}"


@st.composite
def _pnrs(draw: Any) -> str:
    return _pnr_value(draw(st.randoms(use_true_random=False)))


# ---- DNI: 12345678Z, 12345678-Z ----

_DNI_EDGES = ["12345678Z", "12345678z", "12345678-Z", "00000000T", "99999999R", "1234567Z", "123456789Z"]
_DNI_EDGES += ["12345678 Z", "12345678--Z", "1234567-8Z", "12345678\u00c9", "12345678ß", "", "Z"]


def _dni_value(rng: random.Random) -> str:
    body = "".join(rng.choice(DIGITS) for _ in range(8))
    letter = dni.calc_check_digit(body) if rng.random() < 0.6 else rng.choice(string.ascii_uppercase)
    if rng.random() < 0.3:
        letter = letter.lower()
    return body + rng.choice(["", "", "-"]) + letter


@st.composite
def _dnis(draw: Any) -> str:
    return _dni_value(draw(st.randoms(use_true_random=False)))


# ---- NIE: X1234567L, X-1234567-L ----

_NIE_EDGES = ["X1234567L", "x1234567l", "X-1234567-L", "X1234567-L", "X-1234567L", "Y0000000Z", "Z9999999H"]
_NIE_EDGES += ["W1234567L", "A1234567L", "X123456L", "X12345678L", "X 1234567L", "X--1234567L", "-X1234567L"]
_NIE_EDGES += ["X1234567\u00c9", "X\u06611234567L", "\uff381234567L", "X1234567ß", "X1234567L\n", "", "X"]


def _nie_value(rng: random.Random) -> str:
    first = rng.choice("XYZXYZxyzAW")
    body = "".join(rng.choice(DIGITS) for _ in range(7))
    letter = rng.choice(string.ascii_uppercase)
    if first in "XYZ" and rng.random() < 0.7:
        letter = nie.calc_check_digit(first + body)
    if rng.random() < 0.2:
        letter = letter.lower()
    return first + rng.choice(["", "", "-"]) + body + rng.choice(["", "", "-"]) + letter


@st.composite
def _nies(draw: Any) -> str:
    return _nie_value(draw(st.randoms(use_true_random=False)))


# ---- NIR: 184127645108946 (the detector drops its spaces), Corsica 2A and 2B ----

_NIR_EDGES = [
    "184127645108946",
    "184122A45108933",
    "184122A45108946",
    "184122a45108946",
    "184122B45108946",
    "184122C45108946",
]
_NIR_EDGES += ["284123A45108946", "000000000000097", "000000000000000", "18412764510894", "1841276451089460"]
_NIR_EDGES += [
    "1 84 12 76 451 089 46",
    "184.12.76.451.089.46",
    "18412-7645108946",
    "\u0661" + "84127645108946",
]
_NIR_EDGES += [
    "1841276451089\u0664\u0666",
    "18412\u0662A45108946",
    "184127645108946\n",
    " 184127645108946",
    "",
]


def _nir_value(rng: random.Random) -> str:
    body = rng.choice("1212123") + f"{rng.randrange(100):02d}{rng.randint(1, 12):02d}"
    body += rng.choice([f"{rng.randrange(100):02d}", "2A", "2B", "2A", "2B", "2a", "2b", "2C", "3A"])
    body += f"{rng.randrange(1000):03d}{rng.randrange(1000):03d}"
    computable = body[5:7].isdigit() or body[5:7].upper() in ("2A", "2B")
    if computable and rng.random() < 0.7:
        return body + nir.calc_check_digits(body.upper())
    return body + f"{rng.randrange(100):02d}"


@st.composite
def _nirs(draw: Any) -> str:
    return _nir_value(draw(st.randoms(use_true_random=False)))


# ---- codice fiscale: RSSMRA85T10A562S ----

_CF_EDGES = ["RSSMRA85T10A562S", "rssmra85t10a562s", "RSSMRA85T10A562T", "RSSMRA85Z10A562S"]
_CF_EDGES += ["RSSMRA85B30A562S", "RSSMRA00B29A562S", "RSSMRA04B29A562S", "RSSMRA19B29A562S"]
_CF_EDGES += ["RSSMRA85T00A562S", "RSSMRA85T71A562S", "RSSMRA85T40A562S", "RSSMRA8LT10A562S"]
_CF_EDGES += ["RSSMRA85T10A562", "RSSMRA85T10A562SS", "RSSMRÀ85T10A562S", "RSS MRA85T10A562S", ""]


def _cf_value(rng: random.Random) -> str:
    letters = string.ascii_uppercase
    body = "".join(rng.choice(letters) for _ in range(6)) + f"{rng.randrange(100):02d}"
    body += rng.choice("ABCDEHLMPRST" if rng.random() < 0.8 else letters)
    day = rng.choice([rng.randint(1, 31), rng.randint(41, 71), 0, 40, 29, 69, rng.randrange(100)])
    body += f"{day:02d}" + rng.choice(letters) + f"{rng.randrange(1000):03d}"
    body += codicefiscale.calc_check_digit(body) if rng.random() < 0.7 else rng.choice(letters)
    return "".join(c.lower() if rng.random() < 0.1 else c for c in body)


@st.composite
def _cfs(draw: Any) -> str:
    return _cf_value(draw(st.randoms(use_true_random=False)))


CASES = {
    "ssn": (national_id._ssn, ssn.validate, _ssn_value, _SSN_EDGES),
    "idnr": (national_id._idnr, idnr.validate, _idnr_value, _IDNR_EDGES),
    "personnummer": (national_id._personnummer, personnummer.validate, _pnr_value, _PNR_EDGES),
    "dni": (national_id._dni, dni.validate, _dni_value, _DNI_EDGES),
    "nie": (national_id._nie, nie.validate, _nie_value, _NIE_EDGES),
    "nir": (national_id._nir, nir.validate, _nir_value, _NIR_EDGES),
    "codicefiscale": (national_id._codicefiscale, codicefiscale.validate, _cf_value, _CF_EDGES),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_check_agrees_with_stdnum_on_random_and_edge_values(name: str) -> None:
    ours, theirs, make, edges = CASES[name]
    rng = random.Random(name)
    values = edges + [make(rng) for _ in range(20_000)]
    valid = sum(_outcome(theirs, v) is not None for v in values)
    assert 2000 < valid < len(values) - 2000  # the sample holds valid and invalid values
    assert _disagreements(ours, theirs, values) == []


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(_ssns(), st.text(DIGITS + "-", max_size=12)),
    _idnrs(),
    _pnrs(),
    _dnis(),
    _nies(),
    _nirs(),
    _cfs(),
)
def test_each_check_agrees_with_stdnum_on_generated_values(
    ssn_value: str,
    idnr_value: str,
    pnr_value: str,
    dni_value: str,
    nie_value: str,
    nir_value: str,
    cf_value: str,
) -> None:
    for name, value in [
        ("ssn", ssn_value),
        ("idnr", idnr_value),
        ("personnummer", pnr_value),
        ("dni", dni_value),
        ("nie", nie_value),
        ("nir", nir_value),
        ("codicefiscale", cf_value),
    ]:
        ours, theirs, _, _ = CASES[name]
        assert _outcome(ours, value) == _outcome(theirs, value), (name, value)


UNITS = [
    "bsn 123456782 ",
    "1234.56.782 ",
    "RSSMRA85T10A562S ",
    "ssn 536904399 ",
    "idnr 36574261809 ",
    "personnummer 811218-9876 ",
    "personnummer 198112189876 ",
    "12345678Z ",
    "12345678-z ",
    "ssn 536-90-4399 ",
    "536 90 4399 ",
    "36 574 261 809 ",
    "X1234567L ",
    "x-1234567-l ",
    "1 84 12 76 451 089 46 ",
    "184127645108946 ",
    "1 84 12 2A 451 089 33 ",
]


@pytest.mark.parametrize("unit", UNITS)
def test_a_text_of_identifiers_does_not_call_the_library_at_every_one(unit: str) -> None:
    """The library's checks normalise each number character by character first (~20 us
    each): a text of these identifiers cost 200-520 ms of CPU per MiB (of BSNs, 400)."""
    text = unit * 500
    calls = 0

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and "stdnum" in frame.f_code.co_filename:
            calls += 1

    detector = detect.build("national_id", {})
    sys.setprofile(count)
    try:
        spans = detector.find(text)
    finally:
        sys.setprofile(None)
    assert len(spans) == 500
    assert calls == 0
