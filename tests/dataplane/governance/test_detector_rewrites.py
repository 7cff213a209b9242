"""Detectors rewritten for speed find what they found before: the IBAN detector's choice of
the candidate to check (one match instead of trying every shorter prefix in turn) and the
BSN 11-test done in place of ``stdnum.nl.bsn.validate``, each against the code it replaced on
random texts (``test_national_id_checks``: a text of BSNs no longer calls the library at
every number)."""

from __future__ import annotations

import random

import pytest
from stdnum.exceptions import ValidationError
from stdnum.nl import bsn

from dataplane.governance import detect
from dataplane.governance.detect import Span
from dataplane.governance.detectors import iban, national_id
from tests.dataplane.governance.corpus import make_corpus


def _iban_before(text: str) -> list[Span]:
    """``IbanDetector.find`` as it was, at every two letters before a digit rather than at
    the clusters of digits: each shorter spaced prefix of a candidate tried in turn."""
    spans: list[Span] = []
    for at in range(len(text) - 2):
        if spans and at < spans[-1].end:
            continue
        if not (text[at : at + 2].isalpha() and "0" <= text[at + 2] <= "9"):
            continue
        if (match := iban._CANDIDATE.match(text, at)) is None:
            continue
        candidate = match.group()
        length = iban._length(candidate[:2].upper())
        while length:
            spaces = candidate.count(" ") + candidate.count("\u00a0")
            if len(candidate) - spaces == length and iban._valid(candidate):
                spans.append(Span(at, at + len(candidate), candidate[:2].upper()))
                break
            cut = max(candidate.rfind(" "), candidate.rfind("\u00a0"))
            if cut < 0:
                break
            candidate = candidate[:cut]
    return spans


def _iban_text(rng: random.Random) -> str:
    pieces: list[str] = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.randrange(6)
        if kind == 0:
            number = make_corpus.iban_number(rng, rng.choice(make_corpus.IBAN_COUNTRIES))
            pieces.append(make_corpus.iban_written(rng, number))
        elif kind == 1:
            pieces.append(rng.choice(["DE89", "GB29", "NL91", "de89", "XX12", "FR76"]))
        elif kind == 2:
            pieces.append("".join(rng.choice("0123456789ABCZ") for _ in range(rng.randint(1, 5))))
        elif kind == 3:
            pieces.append(rng.choice([" ", " ", "\u00a0", "  ", "-", "_", ".", "\n"]))
        elif kind == 4:
            pieces.append(str(rng.randint(0, 99_999)))
        else:
            pieces.append(rng.choice(["IBAN ", "pay ", "row ", "ab"]))
        if rng.random() < 0.6:
            pieces.append(rng.choice([" ", "\u00a0", ""]))
    return "".join(pieces)


@pytest.mark.parametrize("seed", range(6))
def test_the_iban_detector_finds_what_it_found_before(seed: int) -> None:
    rng = random.Random(seed)
    detector = detect.build("iban", {})
    texts = [_iban_text(rng) for _ in range(1500)]
    before = [_iban_before(t) for t in texts]
    assert sum(bool(spans) for spans in before) > 300  # the sample holds findings
    trimmed = [
        t
        for t, spans in zip(texts, before, strict=True)
        for s in spans
        if iban._CANDIDATE.match(t, s.start).end() != s.end  # type: ignore[union-attr]
    ]
    assert len(trimmed) > 20  # and IBANs followed by more groups
    assert [t for t in texts if detector.find(t) != _iban_before(t)] == []


def _stdnum_bsn(value: str) -> str | None:
    try:
        return bsn.validate(value)
    except ValidationError:
        return None


def _ours(value: str) -> str | None:
    try:
        return national_id._bsn(value)
    except ValidationError:
        return None


def test_the_bsn_check_agrees_with_stdnum() -> None:
    rng = random.Random(5)
    values = ["0", "000000000", "00000000", "0000.00.000", "1", "٣٤٥٦٧٨٩٠١", "1234.56.78٢", "12-34"]
    for _ in range(20_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.choice([8, 9, 9, 9, 10, 1])))
        values.append(digits)
        if len(digits) == 9:
            values.append(f"{digits[:4]}.{digits[4:6]}.{digits[6:]}")
    agree = [_ours(v) == _stdnum_bsn(v) for v in values]
    assert sum(_stdnum_bsn(v) is not None for v in values) > 1000
    assert [v for v, same in zip(values, agree, strict=True) if not same] == []
