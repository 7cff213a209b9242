"""The built-in detectors: option checking, what each finds, and the span contract."""

from __future__ import annotations

from typing import Any

import pytest

import dataplane.governance.detectors
from dataplane.governance import detect
from dataplane.governance.detect import DetectorConfigError


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
