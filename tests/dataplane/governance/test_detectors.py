"""The built-in detectors: option checking, what each finds, and the span contract."""

from __future__ import annotations

from typing import Any

import pytest

import dataplane.governance.detectors
from dataplane.governance import detect
from dataplane.governance.detect import DetectorConfigError, Span


def _found(name: str, text: str, options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    return [(text[s.start : s.end], s.kind) for s in detect.build(name, options).find(text)]


def test_importing_the_package_registers_every_built_in() -> None:
    assert set(dataplane.governance.detectors.BUILT_IN) <= set(detect.names())


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("email", {"x": 1}, "options.x"),
        ("iban", {"countries": ["DE"]}, "options.countries"),
        ("terms", {}, "options.terms"),
        ("terms", {"terms": "falcon"}, "options.terms"),
        ("terms", {"terms": []}, "options.terms"),
        ("terms", {"terms": ["ok", 3]}, "options.terms[1]"),
        ("terms", {"terms": ["ok", ""]}, "options.terms[1]"),
        ("terms", {"terms": ["ok", "x" * 201]}, "options.terms[1]"),
        ("terms", {"terms": ["ok", "   "]}, "options.terms[1]"),
        ("terms", {"terms": ["x"] * 10_001}, "options.terms"),
        ("terms", {"terms": ["ok"], "case_insensitive": "yes"}, "options.case_insensitive"),
        ("terms", {"terms": ["ok"], "whole_words": 1}, "options.whole_words"),
        ("terms", {"terms": ["ok"], "kind": ""}, "options.kind"),
        ("terms", {"terms": ["ok"], "kind": "a b"}, "options.kind"),
        ("terms", {"terms": ["ok"], "kind": "k" * 65}, "options.kind"),
        ("terms", {"terms": ["ok"], "colour": "red"}, "options.colour"),
    ],
)
def test_a_wrong_option_is_refused_naming_it(name: str, options: dict[str, Any], field: str) -> None:
    with pytest.raises(DetectorConfigError) as caught:
        detect.build(name, options)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_an_option_error_never_echoes_the_value() -> None:
    with pytest.raises(DetectorConfigError) as caught:
        detect.build("terms", {"terms": ["secret-codename-" + "x" * 300]})
    assert "secret-codename" not in str(caught.value)


def test_email_finds_addresses_and_not_hosts_or_assets() -> None:
    text = "Mail jürgen.müller@firma.de, root@localhost, logo@2x.png, a@b.co.uk. Or .x.@y.com and end@example.org."
    assert _found("email", text) == [
        ("jürgen.müller@firma.de", "address"),
        ("a@b.co.uk", "address"),
        ("end@example.org", "address"),
    ]


def test_iban_finds_compact_and_spaced_forms_and_drops_a_trailing_number() -> None:
    text = "IBAN DE89 3704 0044 0532 0130 00 1234; GB82WEST12345698765432; bad DE89 3704 0044 0532 0130 01"
    assert _found("iban", text) == [("DE89 3704 0044 0532 0130 00", "DE"), ("GB82WEST12345698765432", "GB")]


def test_terms_are_whole_words_case_insensitive_and_leftmost_longest_by_default() -> None:
    terms = {"terms": ["Project Falcon", "falcon", "İstanbul"], "kind": "codename"}
    text = "the PROJECT FALCON and falcons, falcon_x; falcon. İstanbul"
    assert _found("terms", text, terms) == [
        ("PROJECT FALCON", "codename"),
        ("falcon", "codename"),
        ("İstanbul", "codename"),
    ]


def test_terms_options_change_what_is_found() -> None:
    text = "Falcons and falcon"
    assert _found("terms", text, {"terms": ["falcon"], "whole_words": False}) == [
        ("Falcon", "term"),
        ("falcon", "term"),
    ]
    assert _found("terms", text, {"terms": ["falcon"], "case_insensitive": False}) == [("falcon", "term")]


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("phone", {"regions": "DE"}, "options.regions"),
        ("phone", {"regions": []}, "options.regions"),
        ("phone", {"regions": ["DE", "XX"]}, "options.regions[1]"),
        ("phone", {"regions": ["DE", "DE"]}, "options.regions"),
        ("phone", {"region": ["DE"]}, "options.region"),
        ("payment_card", {"schemes": ["visa"]}, "options.schemes"),
        ("national_id", {"countries": ["NL", "ZZ"]}, "options.countries[1]"),
        ("national_id", {"countries": [1]}, "options.countries[0]"),
        ("ip_address", {"include_private": "no"}, "options.include_private"),
        ("ip_address", {"v6": True}, "options.v6"),
        ("credential", {"shapes": ["jwt"]}, "options.shapes"),
        ("regex", {}, "options.patterns"),
        ("regex", {"patterns": ["ok", "(a)\\1"]}, "options.patterns[1]"),
        ("regex", {"patterns": ["(?=lookahead)"]}, "options.patterns[0]"),
        ("regex", {"patterns": ["unclosed("]}, "options.patterns[0]"),
        ("regex", {"patterns": ["x" * 1001]}, "options.patterns[0]"),
        ("regex", {"patterns": ["x"] * 65}, "options.patterns"),
        ("regex", {"patterns": ["((a{100}){100}){100}"]}, "options.patterns[0]"),
        ("regex", {"patterns": ["x"], "case_insensitive": 0}, "options.case_insensitive"),
        ("regex", {"patterns": ["x"], "flags": "i"}, "options.flags"),
        ("regex", {"patterns": ["ok", "x*|y"]}, "options.patterns[1]"),
    ],
)
def test_every_detector_names_the_option_it_refuses(name: str, options: dict[str, Any], field: str) -> None:
    with pytest.raises(DetectorConfigError) as caught:
        detect.build(name, options)
    assert caught.value.field == field
    assert len(str(caught.value)) < 400


def test_an_unknown_detector_is_refused_naming_the_field() -> None:
    with pytest.raises(DetectorConfigError) as caught:
        detect.build("ml_magic", {})
    assert caught.value.field == "detector"


def test_the_regex_detector_runs_a_catastrophic_pattern_in_linear_time_on_re2() -> None:
    detector = detect.build("regex", {"patterns": ["(a+)+$"], "kind": "redos"})
    # Backtracking engines take exponential time on this input; RE2 scans it once.
    text = "a" * 100_000 + "!"
    assert detector.find(text) == []
    assert detector.find("a" * 50_000) == [Span(0, 50_000, "redos")]
    assert type(detector._regex).__module__.startswith("re2")  # type: ignore[attr-defined]


def test_regex_options_and_empty_matches() -> None:
    options = {"patterns": ["PRJ-[0-9]{4}", "xx+"], "case_insensitive": True, "kind": "ref"}
    assert _found("regex", "see prj-0042 and PRJ-1234", options) == [("prj-0042", "ref"), ("PRJ-1234", "ref")]


@pytest.mark.parametrize("pattern", [r"\b", r"x*\b", r"(?:secret)?\b"])
def test_a_regex_matching_the_empty_string_somewhere_finds_only_its_nonempty_matches(pattern: str) -> None:
    # Not refused at apply (it does not match an empty text), but an empty match at each word
    # boundary is no finding: it would block every text with a word, redact between words.
    detector = detect.build("regex", {"patterns": [pattern]})
    text = "hello world, a secret"
    spans = detector.find(text)
    assert all(s.start < s.end for s in spans)
    assert [text[s.start : s.end] for s in spans] == (["secret"] if "secret" in pattern else [])


def test_phone_numbers_in_every_default_region_and_international() -> None:
    text = "Tel +49 30 12345678, (415) 555-2671; 01 42 68 53 00, UK 020 7946 0958, 0049 89 12345678."
    assert _found("phone", text) == [
        ("+49 30 12345678", "DE"),
        ("(415) 555-2671", "US"),
        ("01 42 68 53 00", "FR"),
        ("020 7946 0958", "GB"),
        ("0049 89 12345678", "DE"),
    ]
    # A national number of a region not chosen is not one.
    assert _found("phone", "(415) 555-2671", {"regions": ["DE"]}) == []


def test_payment_cards_by_scheme_and_not_luhn_valid_lookalikes() -> None:
    text = "4111 1111 1111 1111 123, 3782 822463 10005, IMEI 490154203237518, 4111 1111 1111 1112"
    assert _found("payment_card", text) == [("4111 1111 1111 1111", "visa"), ("3782 822463 10005", "amex")]


def test_national_ids_need_a_context_word_only_when_bare() -> None:
    assert _found("national_id", "BSN: 111222333, bestelling 111222333, 1112.22.333") == [
        ("111222333", "NL.bsn"),
        ("1112.22.333", "NL.bsn"),
    ]
    assert _found("national_id", "DNI 54362315K", {"countries": ["NL"]}) == []


def test_ip_addresses_private_or_not() -> None:
    text = "from 10.0.0.1 and 8.8.8.8 via fe80::1 to 2606:4700::1111; v1.2.3.4.5 at 10:30:00"
    assert _found("ip_address", text) == [
        ("10.0.0.1", "ipv4"),
        ("8.8.8.8", "ipv4"),
        ("fe80::1", "ipv6"),
        ("2606:4700::1111", "ipv6"),
    ]
    assert _found("ip_address", text, {"include_private": False}) == [
        ("8.8.8.8", "ipv4"),
        ("2606:4700::1111", "ipv6"),
    ]


def test_credentials_by_shape() -> None:
    text = (
        "AKIAIOSFODNN7EXAMPLE sk-learn-is-a-library -----BEGIN PUBLIC KEY----- "
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
    )
    assert _found("credential", text) == [
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key_id"),
        (text[text.index("-----BEGIN OPENSSH") :], "private_key"),
    ]
