"""Governance profiles: the schema and the compiler refuse what cannot be served, naming the path."""

from __future__ import annotations

from typing import Any

import pytest

from dataplane.errors import ProfileError
from dataplane.governance import profile


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "detector": "email", "action": "flag", **fields}


def problem(document: Any) -> tuple[str, str]:
    with pytest.raises(ProfileError) as caught:
        profile.compile_profile(document)
    return caught.value.path, caught.value.problem


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        ([], "$", "object"),
        ({"bogus": 1}, "$.bogus", "unknown field"),
        ({"input": {"rules": [{"name": "r", "action": "flag"}]}}, "$.input.rules[0].detector", "required"),
        ({"input": {"rules": [rule(action="shout")]}}, "$.input.rules[0].action", "shout"),
        ({"input": {"rules": [rule(name="Bad Name")]}}, "$.input.rules[0].name", "does not match"),
        ({"input": {"rules": [rule(name="name\n")]}}, "$.input.rules[0].name", "does not match"),
        ({"input": {"rules": [rule(detector="phone\n")]}}, "$.input.rules[0].detector", "does not match"),
        ({"limits": {"max_messages": 0}}, "$.limits.max_messages", "minimum"),
        ({"output": {"window": 8}}, "$.output.window", "minimum"),
        ({"output": {"contract": {"on_failure": "ignore"}}}, "$.output.contract.on_failure", "ignore"),
    ],
)
def test_the_schema_names_the_path(document: Any, path: str, words: str) -> None:
    found_path, message = problem(document)
    assert found_path == path
    assert words in message
    # The same check at apply time, without compiling.
    with pytest.raises(ProfileError) as caught:
        profile.validate_document(document)
    assert caught.value.path == path


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        ({"output": {"rules": [rule(action="mask")]}}, "$.output.rules[0].action", "input action only"),
        (
            {"output": {"rules": [rule(action="classify", data_class="confidential")]}},
            "$.output.rules[0].action",
            "input action only",
        ),
        ({"input": {"rules": [rule(action="classify")]}}, "$.input.rules[0].data_class", "required"),
        ({"input": {"rules": [rule(data_class="internal")]}}, "$.input.rules[0].data_class", "classify"),
        (
            {"input": {"rules": [rule(action="redact", status="invalid_argument")]}},
            "$.input.rules[0].status",
            "block",
        ),
        (
            {"input": {"rules": [rule(action="block", placeholder="[X]")]}},
            "$.input.rules[0].placeholder",
            "redact",
        ),
        (
            {
                "output": {
                    "window": 16,
                    "rules": [rule(detector="terms", action="block", options={"terms": ["ok", "x" * 17]})],
                }
            },
            "$.output.rules[0].options.terms[1]",
            "longer than output.window (16 characters)",
        ),
        (
            {
                "input": {"rules": [rule(name="i", detector="terms", options={"terms": ["y" * 200]})]},
                "output": {
                    "window": 128,
                    "rules": [rule(detector="terms", action="redact", options={"terms": ["y" * 200]})],
                },
            },
            "$.output.rules[0].options.terms[0]",
            "longer than output.window (128 characters)",
        ),
        (
            {"input": {"rules": [rule(detector="no-such-detector")]}},
            "$.input.rules[0].detector",
            "unknown detector 'no-such-detector'",
        ),
    ],
)
def test_the_compiler_checks_what_the_schema_cannot(document: Any, path: str, words: str) -> None:
    profile.validate_document(document)  # the schema lets it through
    found_path, message = problem(document)
    assert (found_path, words in message) == (path, True), message


def test_rule_names_are_unique_across_stages() -> None:
    document = {"input": {"rules": [rule(name="pii")]}, "output": {"rules": [rule(name="pii")]}}
    path, message = problem(document)
    assert path == "$.output.rules[0].name"
    assert "$.input.rules[0]" in message


def test_an_empty_profile_compiles_to_nothing_to_do() -> None:
    compiled = profile.compile_profile({}, version=3, profile_id="p1")
    assert (compiled.profile_id, compiled.version) == ("p1", 3)
    assert not compiled.limits
    assert compiled.input_rules == compiled.output_rules == ()
    assert compiled.window == profile.DEFAULT_WINDOW
    assert compiled.contract is None


def test_limits_and_contract_compile() -> None:
    compiled = profile.compile_profile(
        {"limits": {"max_messages": 4, "max_images": 0}, "output": {"window": 64, "contract": {}}}
    )
    assert compiled.limits == profile.Limits(max_messages=4, max_images=0)
    assert compiled.window == 64
    assert compiled.contract is profile.OnFailure.ERROR


def test_parse_document_bounds_hostile_text() -> None:
    with pytest.raises(ProfileError) as caught:
        profile.parse_document("a: &x [1]\nb: *x\n")
    assert caught.value.path == "$"
    assert "anchors" in caught.value.problem
    assert profile.parse_document('{"limits": {"max_tools": 2}}') == {"limits": {"max_tools": 2}}
