"""Where a detector checks validity itself from a library's data (microseconds instead of the
library call's tens), it must agree with the library: the phone detector with
``phonenumbers.parse`` + ``is_valid_number``, the IBAN detector with ``stdnum.iban.validate``."""

from __future__ import annotations

import json
import random

import phonenumbers
import pytest
from stdnum import iban as stdnum_iban
from stdnum.exceptions import ValidationError

from dataplane.governance import detect
from dataplane.governance.detectors import iban
from tests.dataplane.governance.corpus import make_corpus

REGIONS = ["US", "DE", "FR", "GB"]


def _library(written: str) -> str | None:
    """The region libphonenumber gives ``written`` if some default region makes it valid.

    With the detector's one documented rule on top: where the trunk prefix is 0, a national
    number is written with it (libphonenumber also reads "2822014150" as a German number).
    """
    international = written.startswith(("+", "00"))
    for region in REGIONS:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        assert metadata is not None
        if not international and metadata.national_prefix == "0" and not written.lstrip("(").startswith("0"):
            continue
        try:
            number = phonenumbers.parse(written, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.region_code_for_number(number)
    return None


def _detector(written: str) -> str | None:
    spans = detect.build("phone", {"regions": REGIONS}).find(written)
    return spans[0].kind if len(spans) == 1 and (spans[0].start, spans[0].end) == (0, len(written)) else None


def test_every_number_of_the_corpus_is_valid_for_both() -> None:
    rng = random.Random(7)
    numbers = [make_corpus.phone_number(rng)[1] for _ in range(300)]
    for written in numbers:
        assert _detector(written) == _library(written) is not None, written


@pytest.mark.parametrize("seed", range(4))
def test_random_numbers_get_the_same_verdict(seed: int) -> None:
    rng = random.Random(seed)
    shapes = [
        lambda: "0" + "".join(rng.choice("0123456789") for _ in range(rng.randint(8, 11))),
        lambda: (
            "+"
            + rng.choice(["1", "33", "44", "49", "31", "34"])
            + " "
            + "".join(rng.choice("0123456789") for _ in range(rng.randint(8, 11)))
        ),
        lambda: (
            "("
            + str(rng.randint(200, 999))
            + ") "
            + str(rng.randint(200, 999))
            + "-"
            + str(rng.randint(1000, 9999))
        ),
    ]
    disagreements = []
    valid = 0
    for _ in range(500):
        written = rng.choice(shapes)()
        ours, theirs = _detector(written), _library(written)
        valid += theirs is not None
        if ours != theirs:
            disagreements.append((written, ours, theirs))
    assert valid > 50  # the sample holds valid numbers, not only noise
    assert disagreements == [], json.dumps(disagreements[:10])


def _stdnum(value: str) -> bool:
    try:
        stdnum_iban.validate(value)
    except ValidationError:
        return False
    return True


def test_iban_checks_agree_with_stdnum() -> None:
    rng = random.Random(3)
    candidates = []
    for country in [*make_corpus.IBAN_COUNTRIES, "BE", "ES", "MT", "NO", "SA"]:
        for _ in range(20):
            number = make_corpus.iban_number(rng, country)
            candidates.append(number)
            i = rng.randrange(4, len(number))
            candidates.append(
                number[:i] + rng.choice("0123456789") + number[i + 1 :]
            )  # one character changed
            candidates.append(number[:2] + f"{rng.randint(0, 99):02d}" + number[4:])  # other check digits
            candidates.append(number[:-1])
    candidates += ["XX89370400440532013000", "DE8937040044053201300A", "de89370400440532013000"]
    valid = [c for c in candidates if _stdnum(c)]
    assert len(valid) > 300
    assert [c for c in candidates if iban._valid(c) != _stdnum(c)] == []
