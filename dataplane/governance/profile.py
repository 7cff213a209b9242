"""Governance profiles: validating a document and compiling it into what a node runs.

A profile is a JSON (or YAML) document per tenant, plus a platform default; its published
JSON Schema is ``profile.schema.json`` next to this module. The control plane parses and
validates a document when an admin applies it (``parse_document``, ``validate_document``),
then compiles it (``compile_profile``) so that what it accepts is exactly what a node can
serve; the node compiles every profile of a snapshot once, on apply. Errors are
``ProfileError(path, problem)`` naming the JSON path of the problem, like ``PolicyError``
for policies.

The compiler checks what the schema cannot:

- rule names are unique within the profile (evidence and refusals name rules);
- each rule's detector is registered and accepts its options (``detect.build``; a
  ``DetectorConfigError`` is reported at ``$.<stage>.rules[i].options.<field>``);
- actions fit their stage: ``mask`` and ``classify`` are input actions only (an answer
  has nothing to restore into, and routing is decided already); ``classify`` needs
  ``data_class`` and only it may carry one; ``status`` goes with ``block`` only and
  ``placeholder`` with ``redact`` only;
- an output rule's terms are at most ``output.window`` characters long: a stream's scans
  see a finding whole only up to about that length (``dataplane.governance.stream``), so a
  longer term would block or redact unary answers and pass unseen in every streamed one.

Detectors are built here, once per profile and snapshot, never per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import grpc

from dataplane.config.model import (
    DEFAULT_PLACEHOLDER,
    DEFAULT_WINDOW,
    NO_LIMITS,
    Action,
    CompiledProfile,
    DataClass,
    Limits,
    OnFailure,
    Rule,
    Stage,
)
from dataplane.errors import PolicyError, ProfileError
from dataplane.governance import detect, detectors  # noqa: F401  (registers the built-in detectors)
from dataplane.policy import language

__all__ = [
    "DEFAULT_PLACEHOLDER",
    "DEFAULT_WINDOW",
    "NO_LIMITS",
    "Action",
    "CompiledProfile",
    "Limits",
    "OnFailure",
    "Rule",
    "Stage",
    "compile_profile",
    "parse_document",
    "validate_document",
]

INPUT_ONLY = frozenset({Action.MASK, Action.CLASSIFY})
STATUS_NAMES: Mapping[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
}


@cache
def schema() -> Mapping[str, Any]:
    """The published JSON Schema (Draft 2020-12) of a governance profile."""
    text = resources.files("dataplane.governance").joinpath("profile.schema.json").read_text("utf-8")
    loaded: Mapping[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    Draft202012Validator.check_schema(schema())
    return Draft202012Validator(schema())


def parse_document(text: str) -> Any:
    """Parse profile text (JSON, or YAML) into a document, with the bounds policy text has
    (size, depth, no YAML aliases); ``ProfileError`` at ``$`` naming the problem."""
    try:
        return language.parse_document(text)
    except PolicyError as exc:
        raise ProfileError(exc.path, exc.problem) from None


def validate_document(document: Any) -> None:
    """Validate ``document`` against the published schema; ``ProfileError`` at the first problem."""
    problem = language.schema_problem(_validator(), document)
    if problem is not None:
        raise ProfileError(*problem)


def compile_profile(document: Any, *, version: int = 0, profile_id: str = "") -> CompiledProfile:
    """``document`` validated and compiled, its detectors built; ``ProfileError`` naming the
    path of the first problem."""
    validate_document(document)
    sections = [(stage, document.get(stage.value, {}).get("rules", ())) for stage in Stage]
    # Every cheap check first, so a profile wrong in several ways is reported the same
    # whichever detectors this build registers.
    names: dict[str, str] = {}
    for stage, rules in sections:
        for i, raw in enumerate(rules):
            _check(f"$.{stage.value}.rules[{i}]", stage, raw, names)
    window: int = document.get("output", {}).get("window", DEFAULT_WINDOW)
    for i, raw in enumerate(document.get("output", {}).get("rules", ())):
        _check_streamable(f"$.output.rules[{i}]", raw, window)
    stages = {
        stage: tuple(_rule(f"$.{stage.value}.rules[{i}]", stage, raw) for i, raw in enumerate(rules))
        for stage, rules in sections
    }
    raw_limits = document.get("limits", {})
    output = document.get("output", {})
    contract = output.get("contract")
    return CompiledProfile(
        profile_id=profile_id,
        version=version,
        limits=Limits(
            raw_limits.get("max_messages"),
            raw_limits.get("max_characters"),
            raw_limits.get("max_tools"),
            raw_limits.get("max_images"),
        ),
        input_rules=stages[Stage.INPUT],
        output_rules=stages[Stage.OUTPUT],
        window=window,
        contract=OnFailure(contract.get("on_failure", OnFailure.ERROR)) if contract is not None else None,
    )


def _check(path: str, stage: Stage, raw: Mapping[str, Any], names: dict[str, str]) -> None:
    name: str = raw["name"]
    if name in names:
        raise ProfileError(f"{path}.name", f"duplicate rule name {name!r} (also at {names[name]})")
    names[name] = path
    action = Action(raw["action"])
    if stage is Stage.OUTPUT and action in INPUT_ONLY:
        raise ProfileError(f"{path}.action", f"{action.value} is an input action only")
    if action is Action.CLASSIFY and "data_class" not in raw:
        raise ProfileError(f"{path}.data_class", "required with action classify")
    for field, owner in (
        ("data_class", Action.CLASSIFY),
        ("status", Action.BLOCK),
        ("placeholder", Action.REDACT),
    ):
        if field in raw and action is not owner:
            raise ProfileError(f"{path}.{field}", f"only with action {owner.value}")


def _check_streamable(path: str, raw: Mapping[str, Any], window: int) -> None:
    options = raw.get("options")
    terms = options.get("terms") if raw["detector"] == "terms" and isinstance(options, Mapping) else None
    for k, term in enumerate(terms if isinstance(terms, list) else ()):
        if isinstance(term, str) and len(term) > window:
            raise ProfileError(
                f"{path}.options.terms[{k}]",
                f"longer than output.window ({window} characters): a streamed answer could not be "
                "checked for it",
            )


def _rule(path: str, stage: Stage, raw: Mapping[str, Any]) -> Rule:
    detector_name: str = raw["detector"]
    if detector_name not in detect.names():
        known = ", ".join(detect.names()) or "none"
        raise ProfileError(f"{path}.detector", f"unknown detector {detector_name!r}; known: {known}")
    options = raw.get("options", {})
    try:
        detector = detect.build(detector_name, options)
    except detect.DetectorConfigError as exc:
        # Detectors name an option as "terms" or, already qualified, "options.terms[2]".
        field = exc.field if exc.field.split(".")[0].split("[")[0] == "options" else f"options.{exc.field}"
        raise ProfileError(f"{path}.{field}", language.clip_message(exc.message)) from exc
    return Rule(
        name=raw["name"],
        stage=stage,
        detector_name=detector_name,
        options=json.dumps(options, sort_keys=True, separators=(",", ":")),
        action=Action(raw["action"]),
        detector=detector,
        status=STATUS_NAMES[raw.get("status", "permission_denied")],
        placeholder=raw.get("placeholder", DEFAULT_PLACEHOLDER),
        label=re.sub(r"[^A-Z0-9]+", "_", detector_name.upper()).strip("_") or "VALUE",
        data_class=language.DATA_CLASS_NAMES[raw["data_class"]]
        if "data_class" in raw
        else DataClass.UNSPECIFIED,
    )
